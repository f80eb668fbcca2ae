package brand

import (
	"strings"
	"testing"

	"github.com/tdewolff/parse/v2"
	"github.com/tdewolff/parse/v2/css"
)

// Whatever CheckCSS accepts holds no "<" or escape, no URL token and no
// function or at-rule outside the allow-lists.
func FuzzCheckCSS(f *testing.F) {
	for _, s := range []string{"a{color:red}", "a{b:url(x)}", "@import 'x';", "@media (x){a{b:c}}", "a{b:calc(1px+2px)}",
		"a{b:'</style>'}", "a{b:u\\72l(x)}", ".x{--v: image-set('a' 1x)}", "a{", "}", "/* */"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		if CheckCSS(src) != nil {
			return
		}
		if strings.ContainsAny(src, "<\\\x00") {
			t.Fatalf("accepted %q", src)
		}
		l := css.NewLexer(parse.NewInputString(src))
		for {
			tt, data := l.Next()
			low := strings.ToLower(string(data))
			switch tt {
			case css.ErrorToken:
				return
			case css.URLToken, css.BadURLToken:
				t.Fatalf("accepted a URL in %q", src)
			case css.FunctionToken:
				if !allowedFunctions[unprefixed(strings.TrimSuffix(low, "("))] {
					t.Fatalf("accepted %s in %q", low, src)
				}
			case css.AtKeywordToken:
				if !allowedAtRules[unprefixed(low[1:])] {
					t.Fatalf("accepted %s in %q", low, src)
				}
			}
		}
	})
}

// Whatever CheckErrorPages accepts renders, bounded, without a panic.
func FuzzErrorPageTemplate(f *testing.F) {
	for _, s := range []string{"<h1>{{.Title}}</h1>", "{{range 10}}{{end}}", "{{if .Org}}{{.Org.Name}}{{end}}", "<a href=\"{{.Path}}\">",
		"{{define \"a\"}}{{end}}", "<script>{{.Message}}</script>", "{{printf \"%d\" 1}}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		if CheckErrorPages(map[string]string{KindNotFound: src}) != nil {
			return
		}
		out := Render(&Org{Branding: Branding{ErrorPages: map[string]string{KindNotFound: src}}}, ErrorPage{Kind: KindNotFound, Status: 404, Path: "/<x>"})
		if len(out) > maxPageBytes {
			t.Fatalf("%d bytes", len(out))
		}
	})
}
