package whsig

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzVerify: Verify never panics, returns only its own errors, accepts a
// delivery only when the header holds the MAC computed here independently
// under the receiver's secret with a timestamp in tolerance, and never
// accepts one for a secret the inputs were not signed with.
func FuzzVerify(f *testing.F) {
	sec := mustParse(f, vectorSecret)
	stranger := mustParse(f, "whsec_"+base64.StdEncoding.EncodeToString([]byte("a secret no seed was signed with")))
	now := time.Unix(vectorTimestamp, 0)
	ts := strconv.Itoa(vectorTimestamp)
	f.Add(vectorID, ts, vectorSignature, []byte(vectorBody))
	f.Add(vectorID, ts, "v1a,x "+vectorSignature+" v2,y", []byte(vectorBody))
	f.Add(vectorID, ts, Sign(vectorID, now, []byte("other"), NewSecret(), sec), []byte("other"))
	f.Add("msg.1", ts, vectorSignature, []byte(vectorBody))
	f.Add(vectorID, "", vectorSignature, []byte{})
	f.Add(vectorID, "1614265331", "v1,", []byte(vectorBody))
	f.Add("", "-1", ",", []byte(nil))
	f.Fuzz(func(t *testing.T, id, tsText, sig string, body []byte) {
		h := http.Header{}
		h.Set(HeaderID, id)
		h.Set(HeaderTimestamp, tsText)
		h.Set(HeaderSignature, sig)
		if err := Verify(h, body, []Secret{stranger}, 0, now); err == nil {
			t.Fatalf("accepted for a secret nothing was signed with: %q %q %q %q", id, tsText, sig, body)
		}
		err := Verify(h, body, []Secret{sec}, 0, now)
		var ve *VerifyError
		if err != nil {
			if !errors.As(err, &ve) {
				t.Fatalf("error of another kind: %v", err)
			}
			return
		}
		// Accepted: the header (as http.Header keeps it) must carry our MAC.
		id, tsText, sig = h.Get(HeaderID), h.Get(HeaderTimestamp), h.Get(HeaderSignature)
		n, perr := strconv.ParseInt(tsText, 10, 64)
		if perr != nil || n < vectorTimestamp-300 || n > vectorTimestamp+300 || strings.Contains(id, ".") {
			t.Fatalf("accepted id %q timestamp %q", id, tsText)
		}
		m := hmac.New(sha256.New, []byte(mustDecode(t, vectorSecret[6:])))
		m.Write([]byte(id + "." + tsText + "."))
		m.Write(body)
		want := "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
		found := false
		for _, e := range strings.Fields(sig) {
			found = found || e == want
		}
		if !found {
			t.Fatalf("accepted %q without %q among its entries", sig, want)
		}
	})
}

func mustDecode(t *testing.T, s string) string {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
