//go:build integration

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/schemas"
)

// The roles reach ClickHouse over TLS as a user with a password: the sink
// writes a signed request's result and ingest serves the receipt back out
// of ClickHouse. A wrong password and an untrusted CA stop a role at start
// with an error that says which.
func TestClickHouseTLSRoles(t *testing.T) {
	sec := testenv.ClickHouseSecure(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	e := newE2E(t, strings.Join(cluster.ListenAddrs(), ","))
	e.env = append(e.env, "CERTNODE_CLICKHOUSE_PASSWORD=", "CERTNODE_CLICKHOUSE_PASSWORD_FILE="+sec.PasswordFile,
		"CERTNODE_CLICKHOUSE_USER="+sec.User, "CERTNODE_CLICKHOUSE_CA="+sec.CAFile)
	secure := []string{"--clickhouse", sec.Addr, "--clickhouse-tls"}
	e.sink(secure...)
	e.ingest(secure...)
	e.worker()
	code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"over":"tls"}}`)
	var rc schemas.Receipt
	if code != 200 || json.Unmarshal([]byte(body), &rc, json.RejectUnknownMembers(false)) != nil || rc.ReceiptID == "" {
		t.Fatalf("sign: %d %s", code, body)
	}
	testenv.WaitFor(t, "the receipt served out of ClickHouse", time.Minute, func() (bool, string) {
		code, body := e.do("GET", "/v1/receipts/"+rc.ReceiptID, "", "")
		return code == 200 && strings.Contains(body, rc.ReceiptID), body
	})

	// A role that cannot sign in stops at once, saying why.
	wrong := filepath.Join(t.TempDir(), "wrong.password")
	os.WriteFile(wrong, []byte("not-the-password\n"), 0o600)
	e.env = append(e.env, "CERTNODE_CLICKHOUSE_PASSWORD_FILE="+wrong)
	p := e.sink(secure...)
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("the sink with a wrong password still runs: %s", p.output())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != exitUsage || !strings.Contains(p.output(), "refused the user or its password") ||
		!strings.Contains(p.output(), `user "certnode"`) || strings.Contains(p.output(), "not-the-password") {
		t.Fatalf("the sink with a wrong password: exit %d, %s", code, p.output())
	}
}

// The one-shot commands take the same flags: the record of processing
// reads the tables' sizes over TLS; a client that does not trust the
// server's CA is refused before it sends the password.
func TestClickHouseTLSRefusals(t *testing.T) {
	sec := testenv.ClickHouseSecure(t)
	t.Setenv("CERTNODE_CLICKHOUSE_PASSWORD", sec.Password)
	t.Setenv("CERTNODE_CLICKHOUSE_PASSWORD_FILE", "")
	record := func(extra ...string) result {
		return certnode(t, "", append([]string{"compliance", "processing", "--clickhouse", sec.Addr, "--clickhouse-user", sec.User}, extra...)...)
	}
	if r := record("--clickhouse-ca", sec.CAFile); r.code != 0 || !strings.Contains(r.stdout, "ClickHouse table certnode.results") {
		t.Fatalf("over TLS with the local CA: %+v", r)
	}
	_, otherCA, _ := testenv.SelfSigned(t, "another CA")
	other := filepath.Join(t.TempDir(), "other-ca.pem")
	os.WriteFile(other, otherCA, 0o644)
	for name, flags := range map[string][]string{"another CA": {"--clickhouse-ca", other}, "the system's roots": {"--clickhouse-tls"}} {
		if r := record(flags...); r.code != exitUsage || !strings.Contains(r.stderr, "certificate signed by unknown authority") {
			t.Errorf("%s: %+v", name, r)
		}
	}
	t.Setenv("CERTNODE_CLICKHOUSE_PASSWORD", "wrong")
	if r := record("--clickhouse-ca", sec.CAFile); r.code != exitUsage || !strings.Contains(r.stderr, "refused the user or its password") {
		t.Errorf("a wrong password: %+v", r)
	}
}
