package recordauth

import (
	"strings"
	"testing"
)

func TestKeyringRotation(t *testing.T) {
	oldS, newS := []byte(strings.Repeat("o", 32)), []byte(strings.Repeat("n", 32))
	oldIngest, _ := NewKeyring(oldS)
	newIngest, _ := NewKeyring(newS, oldS)
	worker, err := NewKeyring(oldS, newS) // both during the rotation
	if err != nil {
		t.Fatal(err)
	}
	value := []byte(`{"v":1,"id":"a"}`)
	for _, k := range []*Keyring{oldIngest, newIngest} {
		if err := worker.Check(value, string(k.Header(value))); err != nil {
			t.Errorf("worker refused a rotated key: %v", err)
		}
	}
	if err := oldIngest.Check(value, string(newIngest.Header(value))); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Errorf("unknown kid: %v", err)
	}
	h := string(oldIngest.Header(value))
	for name, bad := range map[string]struct{ value, header string }{
		"edited value": {`{"v":1,"id":"b"}`, h},
		"no kid":       {string(value), strings.SplitN(h, ":", 2)[1]},
		"empty":        {string(value), ""},
		"truncated":    {string(value), h[:len(h)-2]},
	} {
		if worker.Check([]byte(bad.value), bad.header) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewKeyring([]byte("short")); err == nil {
		t.Error("short secret accepted")
	}
}

func TestProducerSignature(t *testing.T) {
	secret, value := []byte("ps_0123456789abcdef0123456789abcdef"), []byte(`{"a":1}`)
	sig := Sign(secret, value)
	if !Valid(secret, value, sig) || !Valid(secret, value, strings.ToUpper(sig)) {
		t.Fatal("own signature refused")
	}
	if Valid(secret, []byte(`{"a":2}`), sig) || Valid([]byte("other"), value, sig) || Valid(secret, value, "") {
		t.Fatal("forged signature accepted")
	}
}

func TestDerive(t *testing.T) {
	a, _ := NewKeyring([]byte(strings.Repeat("a", 32)), []byte(strings.Repeat("b", 32)))
	k1, ok1 := a.Derive(a.SignKeyID(), []byte("job-1"))
	k2, _ := a.Derive(a.SignKeyID(), []byte("job-2"))
	other, _ := NewKeyring([]byte(strings.Repeat("b", 32)))
	k3, _ := other.Derive(other.SignKeyID(), []byte("job-1"))
	if !ok1 || len(k1) != 32 || string(k1) == string(k2) || string(k1) == string(k3) {
		t.Fatal("derived keys are not distinct per label and secret")
	}
	if again, _ := a.Derive(a.SignKeyID(), []byte("job-1")); string(again) != string(k1) {
		t.Fatal("derivation is not stable")
	}
	if _, ok := a.Derive("unknown", []byte("job-1")); ok {
		t.Fatal("an unknown key id derived a key")
	}
}
