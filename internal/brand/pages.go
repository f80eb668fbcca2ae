package brand

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"text/template/parse"
	"time"
	"unicode/utf8"
)

// The kinds of error page an organization may replace.
const (
	KindNotFound    = "404"
	KindTooMany     = "429"
	KindServer      = "5xx"
	KindMaintenance = "maintenance"
)

// Kinds lists them.
var Kinds = []string{KindNotFound, KindTooMany, KindServer, KindMaintenance}

// KindOf is the kind of error page for a status (maintenance: the
// organization's maintenance answer); false for a status with no page.
func KindOf(status int, maintenance bool) (string, bool) {
	switch {
	case maintenance:
		return KindMaintenance, true
	case status == 404:
		return KindNotFound, true
	case status == 429:
		return KindTooMany, true
	case status >= 500 && status <= 599:
		return KindServer, true
	}
	return "", false
}

// Page is all an error page template can show: plain data, with no
// methods or functions to call.
type Page struct {
	Kind    string
	Status  int
	Title   string
	Message string
	// Code is the API's error code; Path the request's path.
	Code string
	Path string
	// RetryAfter is in seconds (0: none); Until is when a maintenance is
	// expected to end ("": not said).
	RetryAfter int
	Until      string
	Org        PageOrg
	// Style is the organization's style sheet (StyleSheet), for a style
	// element.
	Style template.CSS
}

// PageOrg is the organization a page is shown for.
type PageOrg struct {
	Name           string
	LogoURL        string
	FaviconURL     string
	SupportEmail   string
	SupportURL     string
	SupportMessage string
}

// ServiceName names the service on the pages of no organization.
const ServiceName = "CertNode"

//go:embed assets/error.html
var defaultSource string

// defaultPage is the built-in page of every kind; it passes the checks an
// organization's templates do (a test holds it to them).
var defaultPage = template.Must(template.New("page").Parse(defaultSource))

// Titles are the built-in headings of each kind.
var titles = map[string]string{KindNotFound: "Page not found", KindTooMany: "Too many requests",
	KindServer: "Something went wrong", KindMaintenance: "Down for maintenance"}

// ErrorPage is the page for an error: kind and status, the API's code and
// message, and (for 429 and maintenance) the seconds to wait.
type ErrorPage struct {
	Kind, Code, Message, Path string
	Status, RetryAfter        int
	Until                     time.Time
}

// maxPageBytes bounds a rendered page.
const maxPageBytes = 256 << 10

// Render draws an error page for o (nil: the service's own), with its
// template for the kind when it has a usable one, else the built-in page.
func Render(o *Org, e ErrorPage) []byte {
	p := Page{Kind: e.Kind, Status: e.Status, Title: titles[e.Kind], Message: e.Message, Code: e.Code, Path: e.Path,
		RetryAfter: e.RetryAfter, Org: PageOrg{Name: ServiceName}}
	if p.Title == "" {
		p.Title = "Error"
	}
	if !e.Until.IsZero() {
		p.Until = e.Until.UTC().Format("2006-01-02 15:04 UTC")
	}
	var b Branding
	if o != nil {
		b = o.Branding
		p.Org = PageOrg{Name: o.Title(), LogoURL: b.LogoURL, FaviconURL: b.FaviconURL, SupportEmail: b.SupportEmail,
			SupportURL: b.SupportURL, SupportMessage: b.SupportMessage}
	}
	p.Style = template.CSS(StyleSheet(&b))
	if src := b.ErrorPages[e.Kind]; src != "" {
		if t, err := cached(src); err == nil {
			if out, err := execute(t, &p); err == nil {
				return out
			}
		}
	}
	out, err := execute(defaultPage, &p)
	if err != nil { // the built-in page is tested: this is a bug
		panic(err)
	}
	return out
}

// CheckErrorPages reports every problem of an organization's templates,
// each naming its kind; a parse error says where.
func CheckErrorPages(pages map[string]string) error {
	var errs []error
	for _, kind := range slices.Sorted(maps.Keys(pages)) {
		if !slices.Contains(Kinds, kind) {
			errs = append(errs, fmt.Errorf("error_pages: %q is not a kind of page (want %s)", kind, strings.Join(Kinds, ", ")))
			continue
		}
		if _, err := compile(pages[kind]); err != nil {
			errs = append(errs, fmt.Errorf("error_pages.%s: %w", kind, err))
		}
	}
	return errors.Join(errs...)
}

// allowedFuncs are the template functions a page may use: comparisons
// and logic. No printf (it can allocate without bound), no call, no
// range (a loop over a number), no template or define.
var allowedFuncs = set("and", "or", "not", "eq", "ne", "lt", "le", "gt", "ge")

// fieldNames are the names of Page's and PageOrg's fields.
var fieldNames = func() map[string]bool {
	m := map[string]bool{}
	for _, t := range []reflect.Type{reflect.TypeFor[Page](), reflect.TypeFor[PageOrg]()} {
		for f := range t.Fields() {
			m[f.Name] = true
		}
	}
	return m
}()

// compile parses and checks an organization's template: size, the
// restricted language, and a trial run over sample data, which also makes
// html/template check every context it escapes into.
func compile(src string) (*template.Template, error) {
	if len(src) > MaxTemplateBytes {
		return nil, fmt.Errorf("%d bytes, over the limit of %d", len(src), MaxTemplateBytes)
	}
	if !utf8.ValidString(src) {
		return nil, errors.New("not valid UTF-8")
	}
	t, err := template.New("page").Parse(src)
	if err != nil {
		return nil, err
	}
	if n := len(t.Templates()); n > 1 || t.Tree == nil {
		return nil, errors.New("define and block are not allowed")
	}
	if err := checkNode(t.Tree.Root); err != nil {
		return nil, err
	}
	sample := Page{Kind: KindServer, Status: 500, Title: "Title", Message: "Message", Code: "code", Path: "/path", RetryAfter: 1,
		Until: "2006-01-02 15:04 UTC", Org: PageOrg{Name: "Org", LogoURL: "https://example.com/logo.png", FaviconURL: "https://example.com/favicon.ico",
			SupportEmail: "help@example.com", SupportURL: "https://example.com/help", SupportMessage: "Support"}, Style: ":root{}"}
	if _, err := execute(t, &sample); err != nil {
		return nil, err
	}
	return t, nil
}

// checkNode refuses what the restricted language leaves out.
func checkNode(n parse.Node) error {
	switch n := n.(type) {
	case nil, *parse.TextNode, *parse.CommentNode, *parse.DotNode, *parse.NilNode, *parse.BoolNode, *parse.NumberNode, *parse.StringNode:
		return nil
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := checkNode(c); err != nil {
				return err
			}
		}
		return nil
	case *parse.ActionNode:
		return checkNode(n.Pipe)
	case *parse.IfNode:
		return checkBranch(&n.BranchNode)
	case *parse.WithNode:
		return checkBranch(&n.BranchNode)
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				if err := checkNode(a); err != nil {
					return err
				}
			}
		}
		return nil
	case *parse.FieldNode:
		return checkFields(n.Position(), n.Ident)
	case *parse.VariableNode:
		return checkFields(n.Position(), n.Ident[1:])
	case *parse.ChainNode:
		if err := checkNode(n.Node); err != nil {
			return err
		}
		return checkFields(n.Position(), n.Field)
	case *parse.IdentifierNode:
		if !allowedFuncs[n.Ident] {
			return fmt.Errorf("at byte %d: the function %s is not allowed (allowed: and, or, not, eq, ne, lt, le, gt, ge)", n.Position(), n.Ident)
		}
		return nil
	case *parse.RangeNode:
		return fmt.Errorf("at byte %d: range is not allowed", n.Position())
	case *parse.TemplateNode:
		return fmt.Errorf("at byte %d: template is not allowed", n.Position())
	}
	return fmt.Errorf("at byte %d: %s is not allowed", n.Position(), n)
}

func checkBranch(b *parse.BranchNode) error {
	for _, n := range []parse.Node{b.Pipe, b.List, b.ElseList} {
		if err := checkNode(n); err != nil {
			return err
		}
	}
	return nil
}

func checkFields(pos parse.Pos, names []string) error {
	for _, f := range names {
		if !fieldNames[f] {
			return fmt.Errorf("at byte %d: .%s is not a field a page can show", pos, f)
		}
	}
	return nil
}

// limitedBuffer fails a write past maxPageBytes.
type limitedBuffer struct{ bytes.Buffer }

var errPageTooLarge = fmt.Errorf("the page is over %d bytes", maxPageBytes)

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxPageBytes {
		return 0, errPageTooLarge
	}
	return b.Buffer.Write(p)
}

func execute(t *template.Template, p *Page) ([]byte, error) {
	var b limitedBuffer
	if err := t.Execute(&b, p); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// The compiled templates of organizations, by the SHA-256 of their source,
// so a page is parsed and checked once per process, not per request.
var (
	cacheMu sync.Mutex
	cache   = map[[32]byte]*template.Template{}
)

// maxCached bounds the cache; past it, it starts over.
const maxCached = 1000

func cached(src string) (*template.Template, error) {
	key := sha256.Sum256([]byte(src))
	cacheMu.Lock()
	t := cache[key]
	cacheMu.Unlock()
	if t != nil {
		return t, nil
	}
	t, err := compile(src)
	if err != nil {
		return nil, err
	}
	cacheMu.Lock()
	if len(cache) >= maxCached {
		clear(cache)
	}
	cache[key] = t
	cacheMu.Unlock()
	return t, nil
}
