//go:build integration

package chconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/testenv"
)

// The local ClickHouse's TLS port takes the certnode user with its
// password, and refuses a wrong password, a client that does not trust its
// CA, and TLS 1.1.
func TestOpenTLS(t *testing.T) {
	sec := testenv.ClickHouseSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good := Options{Addr: []string{sec.Addr}, User: sec.User, Password: sec.Password, TLS: true, CAFile: sec.CAFile}

	conn, err := Open(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	var user string
	if err := conn.QueryRow(ctx, "SELECT user FROM system.processes WHERE query LIKE '%certnode-tls-probe%' LIMIT 1").Scan(&user); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if user != sec.User {
		t.Fatalf("the query ran as %q, want %q", user, sec.User)
	}

	wrong := good
	wrong.Password = "not-" + sec.Password
	_, err = Open(ctx, wrong)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), `user "certnode"`) || !strings.Contains(err.Error(), PasswordEnv) ||
		strings.Contains(err.Error(), wrong.Password) {
		t.Fatalf("a wrong password: %v, want ErrAuth naming the user and where the password comes from, not the password", err)
	}
	none := good
	none.Password = ""
	if _, err := Open(ctx, none); !errors.Is(err, ErrAuth) {
		t.Fatalf("no password: %v, want ErrAuth", err)
	}

	// A CA of another deployment, and the system's roots: both refuse the
	// local CA's certificate.
	_, otherCA, _ := testenv.SelfSigned(t, "another CA")
	otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
	os.WriteFile(otherFile, otherCA, 0o644)
	for _, ca := range []string{otherFile, ""} {
		o := good
		o.CAFile = ca
		var unknown x509.UnknownAuthorityError
		if _, err := Open(ctx, o); !errors.As(err, &unknown) {
			t.Errorf("CA %q: %v, want the server's certificate refused", ca, err)
		}
	}

	// The secure port speaks TLS only: a plain client gets no session.
	plain := good
	plain.TLS, plain.CAFile = false, ""
	if _, err := Open(ctx, plain); err == nil {
		t.Error("a plain connection to the TLS port succeeded")
	}

	// TLS 1.1 is refused by the server itself (disableProtocols), not only
	// by Go's client defaults.
	c, err := tls.Dial("tcp", sec.Addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11})
	if err == nil {
		c.Close()
		t.Fatal("TLS 1.1 accepted")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("TLS 1.1: %v, want the server's protocol_version alert", err)
	}
}
