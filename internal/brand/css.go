package brand

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/tdewolff/parse/v2"
	"github.com/tdewolff/parse/v2/css"
)

// Custom CSS may restyle the pages but never fetch anything (no url(),
// image-set(), @import or @font-face: no tracking, no exfiltration of
// what a page shows through attribute selectors), never run anything
// (expression(), behavior, -moz-binding, javascript:), and never leave
// its style element ("<" is refused anywhere). It is checked token by
// token with a CSS Syntax Level 3 tokenizer against allow-lists of
// at-rules and functions, and must parse; it is refused, never silently
// edited, so what is stored is what the organization wrote.

// allowedAtRules are the at-rules custom CSS may use.
var allowedAtRules = set("media", "supports", "keyframes", "container", "layer")

// allowedFunctions are the CSS functions custom CSS may call (a vendor
// prefix is ignored): colours, maths, gradients, transforms, filters,
// timing, grid and shape functions, and selector pseudo-classes. None
// loads a resource.
var allowedFunctions = set(
	"rgb", "rgba", "hsl", "hsla", "hwb", "lab", "lch", "oklab", "oklch", "color", "color-mix", "light-dark",
	"calc", "min", "max", "clamp", "var", "abs", "sign", "round", "mod", "rem",
	"linear-gradient", "radial-gradient", "conic-gradient", "repeating-linear-gradient", "repeating-radial-gradient", "repeating-conic-gradient",
	"translate", "translatex", "translatey", "translatez", "translate3d", "rotate", "rotatex", "rotatey", "rotatez", "rotate3d",
	"scale", "scalex", "scaley", "scalez", "scale3d", "skew", "skewx", "skewy", "matrix", "matrix3d", "perspective",
	"blur", "brightness", "contrast", "drop-shadow", "grayscale", "hue-rotate", "invert", "opacity", "saturate", "sepia",
	"cubic-bezier", "steps", "linear", "minmax", "repeat", "fit-content", "circle", "ellipse", "inset", "polygon",
	"counter", "counters", "not", "is", "where", "has", "nth-child", "nth-last-child", "nth-of-type", "nth-last-of-type", "lang", "dir",
)

// refusedIdents are properties that run code in some browsers.
var refusedIdents = set("behavior", "-ms-behavior", "-moz-binding")

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// maxCSSProblems bounds the problems one answer lists.
const maxCSSProblems = 10

// CheckCSS reports what custom CSS uses that is not allowed, each problem
// with its line and column ("" is allowed).
func CheckCSS(src string) error {
	if src == "" {
		return nil
	}
	if len(src) > MaxCSSBytes {
		return fmt.Errorf("%d bytes, over the limit of %d", len(src), MaxCSSBytes)
	}
	if !utf8.ValidString(src) {
		return errors.New("not valid UTF-8")
	}
	var errs []error
	refuse := func(off int, format string, a ...any) {
		if len(errs) < maxCSSProblems {
			line, col := position(src, off)
			errs = append(errs, fmt.Errorf("line %d col %d: %s", line, col, fmt.Sprintf(format, a...)))
		}
	}
	for _, c := range []struct {
		b   byte
		why string
	}{{'<', `"<" is not allowed (it could end the style element)`},
		{'\\', `escapes ("\") are not allowed`}, {0, "NUL is not allowed"}} {
		if i := strings.IndexByte(src, c.b); i >= 0 {
			refuse(i, "%s", c.why)
		}
	}
	if len(errs) > 0 { // the tokenizer would read escapes differently from what is refused
		return errors.Join(errs...)
	}
	l := css.NewLexer(parse.NewInputString(src))
	off := 0
	var open []byte // the brackets open, innermost last
	closing := map[css.TokenType]byte{css.RightParenthesisToken: '(', css.RightBracketToken: '[', css.RightBraceToken: '{'}
	for {
		tt, data := l.Next()
		at := off
		off += len(data)
		low := strings.ToLower(string(data))
		switch tt {
		case css.ErrorToken:
			if err := l.Err(); err != io.EOF {
				refuse(at, "%v", err)
			}
			if len(open) > 0 {
				refuse(at, "%q is not closed", string(open[len(open)-1]))
			}
			if len(errs) > 0 {
				return errors.Join(errs...)
			}
			return checkSyntax(src)
		case css.AtKeywordToken:
			if name := strings.TrimPrefix(low, "@"); !allowedAtRules[unprefixed(name)] {
				refuse(at, "@%s is not allowed (allowed: @media, @supports, @keyframes, @container, @layer)", name)
			}
		case css.LeftParenthesisToken, css.LeftBracketToken, css.LeftBraceToken:
			open = append(open, data[0])
		case css.RightParenthesisToken, css.RightBracketToken, css.RightBraceToken:
			if len(open) == 0 || open[len(open)-1] != closing[tt] {
				refuse(at, "%q closes nothing", data)
			} else {
				open = open[:len(open)-1]
			}
		case css.FunctionToken:
			open = append(open, '(')
			if name := strings.TrimSuffix(low, "("); !allowedFunctions[unprefixed(name)] {
				refuse(at, "%s() is not allowed", name)
			}
		case css.URLToken, css.BadURLToken:
			refuse(at, "url() is not allowed (custom CSS may not load anything)")
		case css.BadStringToken:
			refuse(at, "unterminated string")
		case css.IdentToken:
			if refusedIdents[low] {
				refuse(at, "%s is not allowed", low)
			}
		case css.StringToken:
			if strings.Contains(low, "javascript:") || strings.Contains(low, "vbscript:") {
				refuse(at, "a javascript: or vbscript: string is not allowed")
			}
		case css.CDOToken, css.CDCToken:
			refuse(at, "HTML comment markers are not allowed")
		}
	}
}

// checkSyntax refuses CSS that does not parse as a style sheet (the
// parser's message without its excerpt of the source).
func checkSyntax(src string) error {
	p := css.NewParser(parse.NewInputString(src), false)
	for {
		if gt, _, _ := p.Next(); gt == css.ErrorGrammar {
			if p.HasParseError() {
				msg, _, _ := strings.Cut(p.Err().Error(), "\n")
				return fmt.Errorf("syntax: %s", msg)
			}
			return nil
		}
	}
}

// unprefixed drops a vendor prefix (-webkit-, -moz-, -ms-, -o-).
func unprefixed(name string) string {
	for _, p := range []string{"-webkit-", "-moz-", "-ms-", "-o-"} {
		if strings.HasPrefix(name, p) {
			return name[len(p):]
		}
	}
	return name
}

// position is the 1-based line and column (in bytes) of offset off.
func position(src string, off int) (int, int) {
	before := src[:min(off, len(src))]
	line := 1 + strings.Count(before, "\n")
	col := off - (strings.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}
