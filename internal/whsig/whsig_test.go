package whsig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The specification's test vector, as the reference libraries check it
// (TestWebhookSign in libraries/go/webhook_test.go, and the same values in
// libraries/javascript/src/webhook.test.ts and
// libraries/python/tests/test_webhooks.py of
// github.com/standard-webhooks/standard-webhooks at b2fa7b8719fb).
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func mustParse(t testing.TB, s string) Secret {
	t.Helper()
	sec, err := ParseSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return sec
}

func headers(id, ts, sig string) http.Header {
	h := http.Header{}
	for k, v := range map[string]string{HeaderID: id, HeaderTimestamp: ts, HeaderSignature: sig} {
		if v != "" {
			h.Set(k, v)
		}
	}
	return h
}

func TestSpecVector(t *testing.T) {
	sec := mustParse(t, vectorSecret)
	ts := time.Unix(vectorTimestamp, 0)
	if got := Sign(vectorID, ts, []byte(vectorBody), sec); got != vectorSignature {
		t.Fatalf("Sign = %q, want %q", got, vectorSignature)
	}
	h := headers(vectorID, strconv.Itoa(vectorTimestamp), vectorSignature)
	if err := Verify(h, []byte(vectorBody), []Secret{sec}, 0, ts.Add(90*time.Second)); err != nil {
		t.Fatalf("Verify of the vector: %v", err)
	}
	// The timestamp counts in whole seconds, as the header carries it.
	if got := Sign(vectorID, ts.Add(999*time.Millisecond), []byte(vectorBody), sec); got != vectorSignature {
		t.Fatalf("Sign with a fraction of a second = %q", got)
	}
}

func TestSecret(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a.Encode() == b.Encode() {
		t.Fatal("two NewSecret calls gave the same secret")
	}
	if !strings.HasPrefix(a.Encode(), "whsec_") {
		t.Fatalf("Encode = %q", a.Encode())
	}
	back, err := ParseSecret(a.Encode())
	if err != nil || back.Encode() != a.Encode() {
		t.Fatalf("round trip: %v", err)
	}
	key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(a.Encode(), "whsec_"))
	if len(key) != 32 {
		t.Fatalf("NewSecret key is %d bytes", len(key))
	}
	// Formatting never shows the key.
	for _, f := range []string{"%v", "%+v", "%s", "%#v", "%q"} {
		if out := fmt.Sprintf(f, a); strings.Contains(out, a.Encode()[6:12]) || !strings.Contains(out, "redacted") {
			t.Errorf("%s shows %q", f, out)
		}
	}
	// Unpadded base64 is what some senders show; the reference libraries take it.
	unpadded := "whsec_" + base64.RawStdEncoding.EncodeToString(make([]byte, 31))
	if _, err := ParseSecret(unpadded); err != nil {
		t.Errorf("unpadded: %v", err)
	}

	for _, bad := range []string{
		"",
		"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", // no prefix
		"whsec_",
		"whsec_not*base64*at*all*not*base64*at*all",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 23)),
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65)),
	} {
		_, err := ParseSecret(bad)
		if err == nil {
			t.Errorf("ParseSecret(%q) accepted", bad)
			continue
		}
		if len(bad) > 12 && strings.Contains(err.Error(), bad[6:]) {
			t.Errorf("ParseSecret error quotes the secret: %v", err)
		}
	}
}

func TestRotation(t *testing.T) {
	old, cur, other := NewSecret(), NewSecret(), NewSecret()
	now := time.Unix(1_700_000_000, 0)
	body := []byte(`{"type":"receipt.signed"}`)
	sig := Sign("msg_1", now, body, old, cur)
	parts := strings.Split(sig, " ")
	if len(parts) != 2 || parts[0] != Sign("msg_1", now, body, old) || parts[1] != Sign("msg_1", now, body, cur) {
		t.Fatalf("Sign with two secrets = %q", sig)
	}
	h := headers("msg_1", strconv.FormatInt(now.Unix(), 10), sig)
	for name, secrets := range map[string][]Secret{"old": {old}, "new": {cur}, "both": {other, cur}} {
		if err := Verify(h, body, secrets, 0, now); err != nil {
			t.Errorf("receiver with the %s secret: %v", name, err)
		}
	}
	if err := Verify(h, body, []Secret{other}, 0, now); !errors.Is(err, ErrNoMatchingSignature) {
		t.Errorf("receiver with another secret: %v", err)
	}
	// A receiver holding both secrets accepts a delivery signed with either.
	single := headers("msg_1", strconv.FormatInt(now.Unix(), 10), Sign("msg_1", now, body, old))
	if err := Verify(single, body, []Secret{cur, old}, 0, now); err != nil {
		t.Errorf("receiver with both, delivery with the old: %v", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	sec := mustParse(t, vectorSecret)
	now := time.Unix(vectorTimestamp, 0)
	body := []byte(vectorBody)
	ts := strconv.Itoa(vectorTimestamp)
	good := vectorSignature
	v1 := func(mac []byte) string { return "v1," + base64.StdEncoding.EncodeToString(mac) }
	wrongMAC := hmac.New(sha256.New, []byte("another key of twenty-four bytes"))
	wrongMAC.Write([]byte(vectorID + "." + ts + "." + vectorBody))

	cases := []struct {
		name      string
		h         http.Header
		body      string
		tolerance time.Duration
		now       time.Time
		want      error
		detail    string
	}{
		{name: "no id", h: headers("", ts, good), want: ErrMalformedHeader, detail: "webhook-id is missing"},
		{name: "no timestamp", h: headers(vectorID, "", good), want: ErrMalformedHeader, detail: "webhook-timestamp is missing"},
		{name: "no signature", h: headers(vectorID, ts, ""), want: ErrMalformedHeader, detail: "webhook-signature is missing"},
		{name: "id with a dot", h: headers("msg.1", ts, good), want: ErrMalformedHeader, detail: "contains"},
		{name: "timestamp not a number", h: headers(vectorID, "16142653x0", good), want: ErrMalformedHeader, detail: "not an integer"},
		{name: "timestamp with a sign", h: headers(vectorID, "+"+ts, good), want: ErrMalformedHeader, detail: "not an integer"},
		{name: "timestamp with a leading zero", h: headers(vectorID, "0"+ts, good), want: ErrMalformedHeader, detail: "not an integer"},
		{name: "timestamp with a fraction", h: headers(vectorID, ts+".5", good), want: ErrMalformedHeader, detail: "not an integer"},
		{name: "timestamp overflowing", h: headers(vectorID, "99999999999999999999", good), want: ErrMalformedHeader, detail: "out of range"},
		{name: "entry without a comma", h: headers(vectorID, ts, "v1 "+good), want: ErrMalformedHeader, detail: "entry 1"},
		{name: "entry with no signature", h: headers(vectorID, ts, good+" v1,"), want: ErrMalformedHeader, detail: "entry 2"},
		{name: "entry with no version", h: headers(vectorID, ts, ",abc"), want: ErrMalformedHeader, detail: "entry 1"},
		{name: "too old", h: headers(vectorID, ts, good), now: now.Add(5*time.Minute + time.Second), want: ErrTimestampTolerance, detail: "5m1s before now"},
		{name: "too new", h: headers(vectorID, ts, good), now: now.Add(-5*time.Minute - time.Second), want: ErrTimestampTolerance, detail: "5m1s after now"},
		{name: "tolerance given", h: headers(vectorID, ts, good), now: now.Add(11 * time.Second), tolerance: 10 * time.Second, want: ErrTimestampTolerance, detail: "tolerance 10s"},
		{name: "far future", h: headers(vectorID, "9223372036854775807", good), want: ErrTimestampTolerance},
		{name: "epoch", h: headers(vectorID, "0", good), want: ErrTimestampTolerance},
		{name: "body changed", h: headers(vectorID, ts, good), body: vectorBody + "\n", want: ErrNoMatchingSignature},
		{name: "id changed", h: headers("msg_other", ts, good), want: ErrNoMatchingSignature},
		{name: "timestamp changed", h: headers(vectorID, strconv.Itoa(vectorTimestamp+1), good), want: ErrNoMatchingSignature},
		{name: "wrong key", h: headers(vectorID, ts, v1(wrongMAC.Sum(nil))), want: ErrNoMatchingSignature},
		{name: "right MAC, other version", h: headers(vectorID, ts, "v2,"+strings.TrimPrefix(good, "v1,")), want: ErrNoMatchingSignature, detail: "0 of them well-formed v1"},
		{name: "asymmetric entry only", h: headers(vectorID, ts, "v1a,"+strings.TrimPrefix(good, "v1,")), want: ErrNoMatchingSignature},
		{name: "truncated MAC", h: headers(vectorID, ts, good[:len(good)-4]), want: ErrNoMatchingSignature},
		{name: "base64url MAC", h: headers(vectorID, ts, strings.NewReplacer("+", "-", "/", "_").Replace(good)), want: ErrNoMatchingSignature},
		{name: "MAC of another length", h: headers(vectorID, ts, v1(append(wrongMAC.Sum(nil), 0))), want: ErrNoMatchingSignature},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := body
			if c.body != "" {
				b = []byte(c.body)
			}
			at := now
			if !c.now.IsZero() {
				at = c.now
			}
			err := Verify(c.h, b, []Secret{sec}, c.tolerance, at)
			if !errors.Is(err, c.want) {
				t.Fatalf("Verify = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("Verify = %q, want it to say %q", err, c.detail)
			}
			if strings.Contains(err.Error(), strings.TrimPrefix(good, "v1,")) || strings.Contains(err.Error(), vectorSecret[6:]) {
				t.Fatalf("error shows a signature or the secret: %v", err)
			}
		})
	}
}

// The good signature among unknown versions, extra spaces and bad v1
// entries still verifies, and the tolerance includes its edges.
func TestVerifyAccepts(t *testing.T) {
	sec := mustParse(t, vectorSecret)
	now := time.Unix(vectorTimestamp, 0)
	ts := strconv.Itoa(vectorTimestamp)
	for name, sig := range map[string]string{
		"among others": "v1a,AAAA v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,xyz  " + vectorSignature + " v1,!!",
		"alone":        vectorSignature,
	} {
		for _, at := range []time.Time{now.Add(-5 * time.Minute), now, now.Add(5 * time.Minute)} {
			if err := Verify(headers(vectorID, ts, sig), []byte(vectorBody), []Secret{sec}, 0, at); err != nil {
				t.Errorf("%s at %s: %v", name, at.Sub(now), err)
			}
		}
	}
}

func TestVerifyNeedsSecret(t *testing.T) {
	h := headers(vectorID, strconv.Itoa(vectorTimestamp), vectorSignature)
	now := time.Unix(vectorTimestamp, 0)
	for name, secrets := range map[string][]Secret{"none": nil, "zero": {{}}, "zero beside a real one": {mustParse(t, vectorSecret), {}}} {
		if err := Verify(h, []byte(vectorBody), secrets, 0, now); !errors.Is(err, ErrNoSecret) {
			t.Errorf("%s: %v", name, err)
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("Sign with a zero Secret did not panic")
		}
	}()
	Sign("msg_1", now, nil, Secret{})
}
