package tenants

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFileStore(t *testing.T) {
	key, err := GenerateKey()
	if err != nil || !strings.HasPrefix(key, "cn_") || len(key) < 40 {
		t.Fatalf("GenerateKey: %q %v", key, err)
	}
	s, err := NewFileStore(File{Tenants: []Tenant{{ID: "acme", APIKeyHashes: []string{HashKey(key)}, RateLimit: 5}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{key, "Bearer " + key, " " + key + " "} {
		if tn, ok := s.Authenticate(k); !ok || tn.ID != "acme" {
			t.Fatalf("Authenticate(%q) failed", k)
		}
	}
	for _, k := range []string{"", "Bearer ", key + "x", HashKey(key)} {
		if _, ok := s.Authenticate(k); ok {
			t.Fatalf("Authenticate(%q) accepted", k)
		}
	}
	if tn, _ := s.Authenticate(key); tn.RateLimit != 5 {
		t.Fatal("tenant limits not kept")
	}
}

func TestFileStoreRejectsBadFiles(t *testing.T) {
	h := HashKey("k")
	_, err := NewFileStore(File{Tenants: []Tenant{
		{ID: ""},
		{ID: "a", APIKeyHashes: []string{"plaintext-key"}},
		{ID: "b", APIKeyHashes: []string{h}, RateLimit: -1},
		{ID: "c", APIKeyHashes: []string{h}},
		{ID: "c"},
	}})
	for _, want := range []string{"tenant 0: id", "sha256:<64 hex>", "must not be negative", "share an API key", `"c": defined twice`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "t.json")
	os.WriteFile(bad, []byte(`{"tenants":[{"id":"a","id":"b"}]}`), 0o600)
	if _, err := LoadFile(bad); err == nil {
		t.Fatal("duplicate keys in the tenants file accepted")
	}
	if _, err := LoadFile(filepath.Join(dir, "missing.json")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestMAC(t *testing.T) {
	if _, err := NewMAC([]byte("short")); err == nil {
		t.Fatal("short secret accepted")
	}
	m, _ := NewMAC([]byte(strings.Repeat("s", 32)))
	other, _ := NewMAC([]byte(strings.Repeat("t", 32)))
	sum := m.Sum("acme", "req_1")
	if !m.Valid("acme", "req_1", sum) {
		t.Fatal("own MAC rejected")
	}
	for _, c := range [][3]string{{"acme", "req_2", sum}, {"acmf", "req_1", sum}, {"acme\nreq", "_1", sum}, {"acme", "req_1", ""}} {
		if m.Valid(c[0], c[1], c[2]) {
			t.Fatalf("MAC accepted for %q", c)
		}
	}
	if other.Valid("acme", "req_1", sum) {
		t.Fatal("MAC from another secret accepted")
	}
}
