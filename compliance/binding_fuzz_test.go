package compliance

import (
	"bytes"
	"testing"
)

// Whatever a file holds, reading its binding never panics, and a binding
// read is one a PDF made here would carry.
func FuzzBindingOf(f *testing.F) {
	var pdf bytes.Buffer
	if err := (Renderer{}).PDF(&pdf, []byte(receipt), report()); err != nil {
		f.Fatal(err)
	}
	f.Add(pdf.Bytes())
	f.Add([]byte("/Keywords (certnode-receipt-id:x certnode-json-sha256:y)"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := BindingOf(data)
		if err != nil {
			return
		}
		if len(b.ReceiptID) != 43 || len(b.JSONSHA256) != 64 || !bytes.Contains(data, []byte(b.keywords())) {
			t.Fatalf("read %+v", b)
		}
	})
}
