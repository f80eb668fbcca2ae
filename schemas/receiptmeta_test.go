package schemas

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestWithReceiptMeta(t *testing.T) {
	meta := []byte(`{"issuer":"Acme Corp"}`)
	for in, want := range map[string]string{
		`{}`:                                `{"certnode_meta":{"issuer":"Acme Corp"}}`,
		` {"z":1, "a":{"certnode_meta":2}}`: `{"a":{"certnode_meta":2},"certnode_meta":{"issuer":"Acme Corp"},"z":1}`,
	} {
		got, err := WithReceiptMeta([]byte(in), meta)
		if err != nil || string(got) != want {
			t.Errorf("%s: %s %v, want %s", in, got, err, want)
		}
	}
	for _, in := range []string{`{"certnode_meta":null}`, `{"a":1,"certnode\u005fmeta":1}`} {
		if _, err := WithReceiptMeta([]byte(in), meta); !errors.Is(err, ErrReservedMember) {
			t.Errorf("%s: %v, want ErrReservedMember", in, err)
		}
	}
	for _, in := range []string{`[]`, `{"a":1,"a":2}`, `{`} {
		if _, err := WithReceiptMeta([]byte(in), meta); err == nil || errors.Is(err, ErrReservedMember) {
			t.Errorf("%s: %v", in, err)
		}
	}
}

func TestAPIVersions(t *testing.T) {
	for i := 1; i < len(APIVersions); i++ {
		if APIVersions[i-1].Version >= APIVersions[i].Version {
			t.Fatalf("versions out of order: %v", KnownAPIVersions())
		}
	}
	if LatestAPIVersion() != APIVersionWhiteLabel || !KnownAPIVersion(APIVersionBaseline) || KnownAPIVersion("2026-11-29") {
		t.Fatal("known versions")
	}
	if APIVersionAtLeast(APIVersionBaseline, APIVersionWhiteLabel) || !APIVersionAtLeast(APIVersionWhiteLabel, APIVersionWhiteLabel) || APIVersionAtLeast("", APIVersionWhiteLabel) {
		t.Fatal("at least")
	}
}

// The README's changelog lists every version.
func TestAPIVersionsInREADME(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range APIVersions {
		if !strings.Contains(string(readme), "| `"+v.Version+"` |") {
			t.Errorf("README's API versions table lacks %s", v.Version)
		}
	}
}
