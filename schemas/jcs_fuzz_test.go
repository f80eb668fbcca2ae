package schemas

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
)

// FuzzCanonicalize checks Canonicalize against refCanonical, an independent
// RFC 8785 implementation built on encoding/json (v1) rather than jsontext:
// both must agree on what they accept and on the output bytes, and the
// output must be valid JSON that canonicalizes to itself.
func FuzzCanonicalize(f *testing.F) {
	for _, v := range rfc8785Vectors {
		f.Add([]byte(v.in))
	}
	for _, n := range rfc8785Numbers {
		f.Add([]byte(strconv.FormatFloat(math.Float64frombits(n.bits), 'g', -1, 64)))
	}
	for _, s := range []string{
		`[1e21,1e20,999999999999999999999,1e-7,0.000001,-0,-0.0,0e-5]`,
		`{"s":"\u2028\u2029","t":"` + "\u2028" + `"}`,
		`{"a":"\ud800"}`, `{"a":"\udc00\ud800"}`, `{"a":"\ud83d\ude02","\uD83D\uDE02":1}`,
		`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"x":{"b":1,"b":1}}`,
		`[1e400]`, `[-1e400]`, `[1e-400]`, `[1e999999999999999999]`, `[1.7976931348623157e308]`,
		`[1.7976931348623158e308]`, `[1.7976931348623159e308]`, `{"s":"1.7976931348623157e+308","n":1}`,
		`[123456789012345678901234567890e-400,0.0000000000000000000000000000000001e330]`,
		`{"\u0000":"\u001f\u007f\u0080","\/":"\\\""}`, "{\"\xff\":1}", `"\u00e9"`, `"é"`,
		`[true,false,null]`, ` [ ] `, `{}`, ``, `[`, `{"a":}`, `[1,]`, `01`, `-`, `1.`, `.5`, `+1`,
		`{} {}`, `"a"x`, "\t\r\n 1 \n",
		// Nesting beyond jsontext's limit of 10000 is in TestCanonicalizeRejects:
		// seeds that large make every mutant slow to run and minimize.
		strings.Repeat(`[{"a":`, 100) + "1" + strings.Repeat("}]", 100),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		want, refErr := refCanonical(in)
		objOut, objErr := CanonicalizeObject(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidJSON) && !errors.Is(err, ErrDuplicateKey) {
				t.Fatalf("error is neither ErrInvalidJSON nor ErrDuplicateKey: %v", err)
			}
			// Rejecting is right when the reference rejects too, or for
			// what encoding/json silently repairs: invalid UTF-8 and
			// (possibly lone) surrogate escapes.
			if refErr == nil && utf8.Valid(in) && !surrogateEscape.Match(in) {
				t.Fatalf("rejected valid input (reference gives %s): %v", want, err)
			}
			if objErr == nil {
				t.Fatalf("CanonicalizeObject accepted what Canonicalize rejects: %s", objOut)
			}
			return
		}
		if refErr != nil {
			t.Fatalf("accepted input the reference rejects (%v); output %s", refErr, out)
		}
		if !utf8.Valid(in) {
			t.Fatalf("accepted invalid UTF-8; output %q", out)
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("output differs from the reference\ngot  %q\nwant %q", out, want)
		}
		if !stdjson.Valid(out) || !jsontext.Value(out).IsValid() {
			t.Fatalf("output is not valid JSON: %q", out)
		}
		again, err := Canonicalize(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q (%v)", out, again, err)
		}
		// The output decodes to the same value as the input: compared in
		// canonical form, which is how numbers must be compared.
		if back, err := refCanonical(out); err != nil || !bytes.Equal(back, want) {
			t.Fatalf("output decodes to a different value: %q (%v), want %q", back, err, want)
		}
		if isObject := out[0] == '{'; isObject != (objErr == nil) || isObject && !bytes.Equal(objOut, out) {
			t.Fatalf("CanonicalizeObject: %q, %v; Canonicalize: %q", objOut, objErr, out)
		}
		if objErr != nil && !errors.Is(objErr, ErrNotObject) {
			t.Fatalf("non-object gives %v, want ErrNotObject", objErr)
		}
	})
}

// surrogateEscape matches a \uD800-\uDFFF escape (and, harmlessly, some
// escaped backslashes followed by such text).
var surrogateEscape = regexp.MustCompile(`\\[uU][dD][89a-fA-F]`)

var (
	errRefDuplicate = errors.New("duplicate key")
	errRefRange     = errors.New("number outside the double range")
	errRefDepth     = errors.New("nested too deep")
)

// refMaxDepth is jsontext's limit on nested arrays and objects.
const refMaxDepth = 10000

// refCanonical is RFC 8785 written from the RFC: encoding/json tokenizes,
// duplicate keys are caught after unescaping, members are sorted by UTF-16
// code units, numbers are formatted by ECMAScript's Number::toString
// rules and strings are escaped as JSON.stringify does.
func refCanonical(in []byte) ([]byte, error) {
	dec := stdjson.NewDecoder(bytes.NewReader(in))
	dec.UseNumber()
	out, err := refValue(dec, nil, 0)
	if err != nil {
		return nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the value: %v %v", tok, err)
	}
	return out, nil
}

func refValue(dec *stdjson.Decoder, out []byte, depth int) ([]byte, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch tok := tok.(type) {
	case nil:
		return append(out, "null"...), nil
	case bool:
		return strconv.AppendBool(out, tok), nil
	case string:
		return refString(out, tok), nil
	case stdjson.Number:
		f, err := strconv.ParseFloat(string(tok), 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %s", errRefRange, tok)
		}
		return append(out, refNumber(f)...), nil
	case stdjson.Delim:
		if depth++; depth > refMaxDepth {
			return nil, errRefDepth
		}
		switch tok {
		case '[':
			out = append(out, '[')
			for i := 0; dec.More(); i++ {
				if i > 0 {
					out = append(out, ',')
				}
				if out, err = refValue(dec, out, depth); err != nil {
					return nil, err
				}
			}
			if err := refEnd(dec, ']'); err != nil {
				return nil, err
			}
			return append(out, ']'), nil
		case '{':
			type member struct {
				key string
				val []byte
			}
			var members []member
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key := k.(string) // encoding/json only returns strings in key position
				if seen[key] {
					return nil, fmt.Errorf("%w: %q", errRefDuplicate, key)
				}
				seen[key] = true
				val, err := refValue(dec, nil, depth)
				if err != nil {
					return nil, err
				}
				members = append(members, member{key, val})
			}
			if err := refEnd(dec, '}'); err != nil {
				return nil, err
			}
			slices.SortFunc(members, func(a, b member) int {
				return slices.Compare(utf16.Encode([]rune(a.key)), utf16.Encode([]rune(b.key)))
			})
			out = append(out, '{')
			for i, m := range members {
				if i > 0 {
					out = append(out, ',')
				}
				out = append(refString(out, m.key), ':')
				out = append(out, m.val...)
			}
			return append(out, '}'), nil
		}
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}

func refEnd(dec *stdjson.Decoder, want stdjson.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != want {
		return fmt.Errorf("got %v, want %v", tok, want)
	}
	return nil
}

func refString(out []byte, s string) []byte {
	out = append(out, '"')
	for _, r := range s {
		switch r {
		case '"':
			out = append(out, `\"`...)
		case '\\':
			out = append(out, `\\`...)
		case '\b':
			out = append(out, `\b`...)
		case '\f':
			out = append(out, `\f`...)
		case '\n':
			out = append(out, `\n`...)
		case '\r':
			out = append(out, `\r`...)
		case '\t':
			out = append(out, `\t`...)
		default:
			if r < 0x20 {
				out = fmt.Appendf(out, `\u%04x`, r)
			} else {
				out = utf8.AppendRune(out, r)
			}
		}
	}
	return append(out, '"')
}

// refNumber is ECMAScript Number::toString (ECMA-262 6.1.6.1.20) over
// Go's shortest round-trip digits.
func refNumber(f float64) string {
	if f == 0 {
		return "0" // and -0
	}
	if f < 0 {
		return "-" + refNumber(-f)
	}
	mant, exp, _ := strings.Cut(strconv.FormatFloat(f, 'e', -1, 64), "e")
	digits := strings.Replace(mant, ".", "", 1)
	e, _ := strconv.Atoi(exp)
	k, n := len(digits), e+1 // value = digits × 10^(n-k)
	switch {
	case k <= n && n <= 21:
		return digits + strings.Repeat("0", n-k)
	case 0 < n && n <= 21:
		return digits[:n] + "." + digits[n:]
	case -6 < n && n <= 0:
		return "0." + strings.Repeat("0", -n) + digits
	}
	m := digits[:1]
	if k > 1 {
		m += "." + digits[1:]
	}
	if n-1 < 0 {
		return m + "e-" + strconv.Itoa(1-n)
	}
	return m + "e+" + strconv.Itoa(n-1)
}

// The reference must itself pass the RFC vectors, or agreeing with it
// would prove nothing.
func TestRefCanonicalRFC8785(t *testing.T) {
	for _, v := range rfc8785Vectors {
		if got, err := refCanonical([]byte(v.in)); err != nil || string(got) != v.want {
			t.Errorf("%s: got %q (%v), want %q", v.name, got, err, v.want)
		}
	}
	for _, n := range rfc8785Numbers {
		if got := refNumber(math.Float64frombits(n.bits)); got != n.want {
			t.Errorf("%016x: got %s, want %s", n.bits, got, n.want)
		}
	}
	for _, in := range []string{`{"a":1,"\u0061":2}`, `[1e400]`, `{} {}`, `[1,]`, strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
		if got, err := refCanonical([]byte(in)); err == nil {
			t.Errorf("%.40s: accepted as %.40s", in, got)
		}
	}
}
