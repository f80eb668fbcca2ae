package tenants

import (
	"net/netip"
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
	s, err := NewFileStore(File{Tenants: []Tenant{{ID: "acme", APIKeyHashes: []string{HashKey(key)}, Limits: Limits{RateLimit: 5}}}})
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
		{ID: "b", APIKeyHashes: []string{h}, Limits: Limits{RateLimit: -1}},
		{ID: "c", APIKeyHashes: []string{h}},
		{ID: "c"},
		{ID: "café"},
	}})
	for _, want := range []string{"tenant 0: tenant id is required", "tenant 5: tenant id must be printable ASCII", "sha256:<64 hex>", "must not be negative", "share an API key", `"c": defined twice`} {
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

func TestProducerKeys(t *testing.T) {
	secret := strings.Repeat("p", 32)
	s, err := NewFileStore(File{Tenants: []Tenant{{ID: "acme", ProducerKeys: []ProducerKey{{ID: "pk1", Secret: secret}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := s.ProducerSecret("acme", "pk1"); !ok || string(got) != secret {
		t.Fatal("producer key not found")
	}
	for _, c := range [][2]string{{"acme", "pk2"}, {"globex", "pk1"}, {"", ""}} {
		if _, ok := s.ProducerSecret(c[0], c[1]); ok {
			t.Errorf("ProducerSecret(%q, %q) found", c[0], c[1])
		}
	}
	_, err = NewFileStore(File{Tenants: []Tenant{{ID: "a", ProducerKeys: []ProducerKey{{ID: "k", Secret: "short"}, {ID: "k", Secret: secret}, {ID: "a b", Secret: secret}}}}})
	for _, want := range []string{"at least 32 bytes", "must be unique"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestKeyRestrictions(t *testing.T) {
	all := &Tenant{ID: "a"}
	scoped := &Tenant{ID: "a", Scopes: []string{ScopeRead}, CIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32"), netip.MustParsePrefix("10.0.0.0/8")}}
	if !all.Allows(ScopeSign) || !all.AllowsAddr(netip.MustParseAddr("192.0.2.1")) {
		t.Fatal("a key without restrictions is restricted")
	}
	if scoped.Allows(ScopeSign) || !scoped.Allows(ScopeRead) {
		t.Fatal("scopes not applied")
	}
	for addr, want := range map[string]bool{"127.0.0.2": true, "::ffff:127.0.0.2": true, "127.0.0.1": false, "10.9.8.7": true, "::1": false} {
		if got := scoped.AllowsAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("%s: %v, want %v", addr, got, want)
		}
	}
}
