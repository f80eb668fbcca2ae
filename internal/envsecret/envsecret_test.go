package envsecret

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	t.Setenv("T_SECRET", "")
	t.Setenv("T_SECRET_FILE", "")
	if _, ok, err := Read("T_SECRET"); ok || err != nil {
		t.Fatalf("unset: %v %v", ok, err)
	}
	f := filepath.Join(t.TempDir(), "s")
	os.WriteFile(f, []byte("from-file\n"), 0o600)
	t.Setenv("T_SECRET_FILE", f)
	if v, ok, err := Read("T_SECRET"); !ok || err != nil || v != "from-file\n" {
		t.Fatalf("file: %q %v %v", v, ok, err)
	}
	t.Setenv("T_SECRET", "direct")
	if v, _, _ := Read("T_SECRET"); v != "direct" {
		t.Fatalf("variable over file: %q", v)
	}
	t.Setenv("T_SECRET", "")
	t.Setenv("T_SECRET_FILE", f+".missing")
	if _, ok, err := Read("T_SECRET"); !ok || err == nil || !strings.Contains(err.Error(), "T_SECRET_FILE") {
		t.Fatalf("missing file: %v %v", ok, err)
	}
}
