package schemas

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/go-json-experiment/json"
)

// The published RFC 8785 test vectors (input -> canonical output), kept in
// testdata so the hosted verification page's JavaScript JCS is held to the
// same ones (cmd/certnode's browser test).
var rfc8785Vectors, rfc8785Numbers = loadJCSVectors()

func loadJCSVectors() ([]struct{ name, in, want string }, []struct {
	bits uint64
	want string
}) {
	data, err := os.ReadFile("testdata/jcs/rfc8785.json")
	if err != nil {
		panic(err)
	}
	var f struct {
		Vectors []struct {
			Name string `json:"name"`
			In   string `json:"in"`
			Want string `json:"want"`
		} `json:"vectors"`
		// Numbers are RFC 8785 Appendix B: IEEE-754 bit patterns (hex) and
		// their ECMAScript form.
		Numbers []struct {
			Bits string `json:"bits"`
			Want string `json:"want"`
		} `json:"numbers"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		panic(err)
	}
	vs := make([]struct{ name, in, want string }, len(f.Vectors))
	for i, v := range f.Vectors {
		vs[i].name, vs[i].in, vs[i].want = v.Name, v.In, v.Want
	}
	ns := make([]struct {
		bits uint64
		want string
	}, len(f.Numbers))
	for i, n := range f.Numbers {
		b, err := strconv.ParseUint(strings.TrimPrefix(n.Bits, "0x"), 16, 64)
		if err != nil {
			panic(err)
		}
		ns[i].bits, ns[i].want = b, n.Want
	}
	return vs, ns
}

func TestCanonicalizeRFC8785Vectors(t *testing.T) {
	for _, tc := range rfc8785Vectors {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestCanonicalizeRFC8785Numbers(t *testing.T) {
	for _, tc := range rfc8785Numbers {
		f := math.Float64frombits(tc.bits)
		in := strconv.FormatFloat(f, 'g', -1, 64)
		got, err := Canonicalize([]byte(in))
		if err != nil {
			t.Fatalf("%016x (%s): %v", tc.bits, in, err)
		}
		if string(got) != tc.want {
			t.Errorf("%016x (%s): got %s want %s", tc.bits, in, got, tc.want)
		}
	}
}

func TestCanonicalizeEdgeCases(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"1e21 switches to exponent", `[1e21,1e20,100000000000000000000]`, `[1e+21,100000000000000000000,100000000000000000000]`},
		{"1e-7 switches to exponent", `[1e-7,0.000001,1E-6]`, `[1e-7,0.000001,0.000001]`},
		{"minus zero", `[-0,-0.0,0e10]`, `[0,0,0]`},
		{"smallest subnormal", `[5e-324,4.9406564584124654e-324]`, `[5e-324,5e-324]`},
		{"largest double", `[1.7976931348623157e308]`, `[1.7976931348623157e+308]`},
		{"integers beyond 2^53 round as doubles", `[9007199254740993,12345678901234567890,-9007199254740993]`, `[9007199254740992,12345678901234567000,-9007199254740992]`},
		{"trailing zeros", `[1.50,2.000,10.0e1]`, `[1.5,2,100]`},
		{"astral keys sort by UTF-16 code units", "{\"\uff61\":1,\"\U0001F600\":2,\"\ue000\":3}", "{\"\U0001F600\":2,\"\ue000\":3,\"\uff61\":1}"},
		{"no HTML escaping", `{"a":"<b>&amp;</b>"}`, `{"a":"<b>&amp;</b>"}`},
		{"U+2028 and U+2029 stay literal", `{"s":"\u2028\u2029"}`, "{\"s\":\"\u2028\u2029\"}"},
		{"control characters", `{"s":"\u0000\u0008\u0009\u000a\u000c\u000d\u001f"}`, `{"s":"\u0000\b\t\n\f\r\u001f"}`},
		{"escaped slash and unicode letters unescaped", `{"s":"\/\u00e9"}`, "{\"s\":\"/\u00e9\"}"},
		{"null members kept", `{"b":null,"a":[null]}`, `{"a":[null],"b":null}`},
		{"nested whitespace removed", " { \"a\" : [ 1 , { \"c\" : true , \"b\" : false } ] } ", `{"a":[1,{"b":false,"c":true}]}`},
		{"scalars", `"x"`, `"x"`},
		{"nested 10000 deep", strings.Repeat("[", 10000) + strings.Repeat("]", 10000), strings.Repeat("[", 10000) + strings.Repeat("]", 10000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	cases := []struct {
		name, in string
		want     error
	}{
		{"duplicate key", `{"a":1,"a":2}`, ErrDuplicateKey},
		{"duplicate nested key", `{"x":{"a":1,"b":2,"a":3}}`, ErrDuplicateKey},
		{"duplicate key via escapes", `{"a":1,"\u0061":2}`, ErrDuplicateKey},
		{"not JSON", `{"a":`, ErrInvalidJSON},
		{"trailing garbage", `{} {}`, ErrInvalidJSON},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", ErrInvalidJSON},
		{"lone surrogate escape", `{"a":"\ud800"}`, ErrInvalidJSON},
		{"number above double range", `[1.7976931348623157e308,1e400]`, ErrInvalidJSON},
		{"number below double range", `{"a":-2e308}`, ErrInvalidJSON},
		{"empty", ``, ErrInvalidJSON},
		{"nested deeper than 10000", strings.Repeat("[", 10001) + strings.Repeat("]", 10001), ErrInvalidJSON},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Canonicalize([]byte(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := CanonicalizeObject([]byte(`[1]`)); !errors.Is(err, ErrNotObject) {
		t.Fatalf("array payload: got %v, want ErrNotObject", err)
	}
}

var esNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?(e[+-][1-9][0-9]*)?$`)

// TestCanonicalizeRandomNumbers checks random doubles: the canonical text
// parses back to the same double, has ECMAScript's shape, uses exponent form
// exactly outside [1e-6, 1e21), and is the shortest round-trip digit string.
func TestCanonicalizeRandomNumbers(t *testing.T) {
	r := rand.New(rand.NewPCG(8785, 1))
	for i := 0; i < 200000; i++ {
		var f float64
		switch i % 3 {
		case 0:
			f = math.Float64frombits(r.Uint64())
		case 1:
			f = (r.Float64() - 0.5) * math.Pow(10, float64(r.IntN(60)-30))
		default:
			f = float64(r.Int64N(1<<62) - 1<<61)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			continue
		}
		in := strconv.FormatFloat(f, 'e', 20, 64) // deliberately non-canonical input
		got, err := Canonicalize([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		s := string(got)
		back, err := strconv.ParseFloat(s, 64)
		if err != nil || back != f && !(f == 0 && back == 0) {
			t.Fatalf("%s -> %s does not round-trip (%v)", in, s, err)
		}
		if !esNumber.MatchString(s) {
			t.Fatalf("%s -> %s is not ECMAScript number form", in, s)
		}
		abs := math.Abs(f)
		mantissa, _, hasExp := strings.Cut(s, "e")
		if wantExp := abs != 0 && (abs >= 1e21 || abs < 1e-6); hasExp != wantExp {
			t.Fatalf("%s -> %s: exponent form %v, want %v", in, s, hasExp, wantExp)
		}
		// Shortest round-trip digits: the same significant digits as Go's
		// shortest 'e' form.
		shortMantissa, _, _ := strings.Cut(strconv.FormatFloat(abs, 'e', -1, 64), "e")
		if f != 0 && sigDigits(mantissa) != sigDigits(shortMantissa) {
			t.Fatalf("%s -> %s: digits %s, shortest are %s", in, s, sigDigits(mantissa), sigDigits(shortMantissa))
		}
	}
}

// sigDigits strips sign, point and leading/trailing zeros from a mantissa.
func sigDigits(m string) string {
	m = strings.NewReplacer("-", "", ".", "").Replace(m)
	return strings.Trim(m, "0")
}
