package main

import (
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/certnode/certnode/signer"
)

// The log's checkpoint signer: an Ed25519 key whose notes the standard
// verifier checks, under an origin it accepts.
func TestNoteSigner(t *testing.T) {
	key, err := signer.GenerateSoftware("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	s, vkey, err := newNoteSigner("example.com/receipts", key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil || v.KeyHash() != s.KeyHash() || v.Name() != s.Name() {
		t.Fatalf("verifier %v %v, signer %s %08x", v, err, s.Name(), s.KeyHash())
	}
	signed, err := note.Sign(&note.Note{Text: "example.com/receipts\n1\nAAAA\n"}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(signed, note.VerifierList(v)); err != nil {
		t.Fatalf("a note it signed: %v", err)
	}
	for _, bad := range []string{"my log", "a+b", ""} {
		if _, _, err := newNoteSigner(bad, key); err == nil || !strings.Contains(err.Error(), "origin") {
			t.Errorf("origin %q: %v", bad, err)
		}
	}
	es, _ := signer.GenerateSoftware("ES256")
	if _, _, err := newNoteSigner("example.com/receipts", es); err == nil {
		t.Error("a P-256 key was taken for the log's Ed25519 key")
	}
}
