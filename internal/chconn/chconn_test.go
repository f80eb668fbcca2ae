package chconn

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want []string // every problem named; none: valid
	}{
		{"plain", Options{Addr: []string{"127.0.0.1:9000"}}, nil},
		{"tls with a CA and a user", Options{Addr: []string{"ch1:9440", "ch2:9440"}, User: "certnode", Password: "p", TLS: true, CAFile: "ca.pem"}, nil},
		{"tls, the system's roots", Options{Addr: []string{"[::1]:9440"}, TLS: true}, nil},
		{"a password on loopback without TLS", Options{Addr: []string{"127.0.0.1:9000", "localhost:9000"}, Password: "p"}, nil},
		{"a password off this machine without TLS", Options{Addr: []string{"127.0.0.1:9000", "ch1:9000"}, Password: "p"}, []string{"sent in the clear"}},
		{"no address", Options{}, []string{"an address is required"}},
		{"no port", Options{Addr: []string{"127.0.0.1"}}, []string{`"127.0.0.1" must be host:port`}},
		{"a CA without TLS, and a bad address", Options{Addr: []string{"ok:1", "bad"}, CAFile: "ca.pem"},
			[]string{`"bad" must be host:port`, "a CA file is for TLS"}},
	} {
		err := tc.o.Validate()
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to say %q", tc.name, err, w)
			}
		}
	}
}

// Open refuses what Validate refuses before it dials anything, and an
// unreadable CA file.
func TestOpenRefusesBadOptions(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, Options{Addr: []string{"nohost"}}); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Errorf("bad address: %v", err)
	}
	if _, err := Open(ctx, Options{Addr: []string{"127.0.0.1:1"}, TLS: true, CAFile: filepath.Join(t.TempDir(), "missing.pem")}); err == nil ||
		!strings.Contains(err.Error(), "CA file") {
		t.Errorf("missing CA file: %v", err)
	}
}

func TestOptionsLogValue(t *testing.T) {
	var b strings.Builder
	o := Options{Addr: []string{"ch:9440"}, User: "certnode", Password: "s3cret-pw", TLS: true}
	slog.New(slog.NewTextHandler(&b, nil)).Info("connect", "clickhouse", o)
	if strings.Contains(b.String(), "s3cret-pw") || !strings.Contains(b.String(), "certnode") {
		t.Fatalf("logged %q", b.String())
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, o); strings.Contains(out, "s3cret-pw") || !strings.Contains(out, "certnode") {
			t.Fatalf("%s printed %q", f, out)
		}
	}
}

func TestPasswordFromEnv(t *testing.T) {
	t.Setenv(PasswordEnv, "")
	t.Setenv(PasswordEnv+"_FILE", "")
	if p, err := PasswordFromEnv(); p != "" || err != nil {
		t.Fatalf("unset: %q %v", p, err)
	}
	f := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(f, []byte("s3cret\n"), 0o600)
	t.Setenv(PasswordEnv+"_FILE", f)
	if p, err := PasswordFromEnv(); p != "s3cret" || err != nil {
		t.Fatalf("file (its line break dropped): %q %v", p, err)
	}
	t.Setenv(PasswordEnv+"_FILE", f+".missing")
	if _, err := PasswordFromEnv(); err == nil || !strings.Contains(err.Error(), PasswordEnv+"_FILE") {
		t.Fatalf("missing file: %v", err)
	}
}
