// Package testenv finds the real services that integration tests use. The
// services are started by `make test` (deploy/local); a test that cannot
// find one fails with a message saying how to start it, never skips.
package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Service addresses, overridable by environment.
func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// KafkaBrokers returns the seed broker of the local Kafka, checked reachable.
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	addr := env("CERTNODE_TEST_KAFKA", "127.0.0.1:9092")
	reachable(t, "Kafka", addr, "deploy/local/kafka.sh start")
	return []string{addr}
}

// ClickHouseAddr returns the native-protocol address of the local ClickHouse.
func ClickHouseAddr(t testing.TB) string {
	t.Helper()
	addr := env("CERTNODE_TEST_CLICKHOUSE", "127.0.0.1:9000")
	reachable(t, "ClickHouse", addr, "deploy/local/clickhouse.sh start")
	return addr
}

// SecureClickHouse is the local ClickHouse's native port over TLS and the
// user with a password that deploy/local/clickhouse.sh makes.
type SecureClickHouse struct {
	Addr         string
	CAFile       string // the local CA that signed the server's certificate
	User         string
	Password     string
	PasswordFile string
}

// ClickHouseSecure returns the local ClickHouse's TLS port, checked
// reachable, with the CA and password files under $CERTNODE_LOCAL/clickhouse.
func ClickHouseSecure(t testing.TB) SecureClickHouse {
	t.Helper()
	addr := env("CERTNODE_TEST_CLICKHOUSE_SECURE", "127.0.0.1:9440")
	reachable(t, "ClickHouse (TLS)", addr, "deploy/local/clickhouse.sh start")
	dir := filepath.Join(localDir(t), "clickhouse")
	s := SecureClickHouse{Addr: addr, CAFile: filepath.Join(dir, "ca.pem"), User: "certnode", PasswordFile: filepath.Join(dir, "certnode.password")}
	pw, err := os.ReadFile(s.PasswordFile)
	if err != nil {
		t.Fatalf("the certnode user's password: %v (deploy/local/clickhouse.sh start writes it)", err)
	}
	s.Password = string(pw)
	return s
}

// localDir is where deploy/local keeps its state: $CERTNODE_LOCAL, or the
// repository's .local.
func localDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("CERTNODE_LOCAL"); d != "" {
		return d
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || len(out) < 2 {
		t.Fatalf("go env GOMOD: %v (or set $CERTNODE_LOCAL)", err)
	}
	return filepath.Join(filepath.Dir(string(out[:len(out)-1])), ".local")
}

// PKCS11 returns the module and token label of the local SoftHSM2 token.
// The PIN comes from CERTNODE_PKCS11_PIN(_FILE), as in production.
func PKCS11(t testing.TB) (module, token string) {
	t.Helper()
	module, token = os.Getenv("CERTNODE_PKCS11_MODULE"), os.Getenv("CERTNODE_PKCS11_TOKEN")
	if module == "" || token == "" || os.Getenv("SOFTHSM2_CONF") == "" {
		t.Fatal("SoftHSM2 is not configured: run `make test`, or `eval \"$(deploy/local/softhsm.sh env)\"` first")
	}
	if _, err := os.Stat(module); err != nil {
		t.Fatalf("PKCS#11 module: %v (deploy/local/softhsm.sh init installs it)", err)
	}
	return module, token
}

func reachable(t testing.TB, name, addr, how string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatalf("%s is not reachable at %s: %v (start it with `%s`, or run `make test`)", name, addr, err, how)
	}
	c.Close()
}

// RandomSuffix is 10 random hex digits, for names of a test's own (topic
// prefixes, organizations, tables) on the shared services.
func RandomSuffix() string {
	var b [5]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

// WaitFor polls cond until it holds, failing the test after limit with
// what cond last said.
func WaitFor(t testing.TB, what string, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: gave up after %s (%s)", what, limit, last)
}

// RunUntilCleanup runs run until the test ends, then ends its context and
// calls closer: run must return nil within 30 s.
func RunUntilCleanup(t testing.TB, run func(context.Context) error, closer func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return 30s after its context ended")
		}
		closer()
	})
}

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

// CertnodeBinary builds the certnode command in dir (a path to
// cmd/certnode from the test's package), with the race detector or
// without, once per test process: tests that run roles as their own
// processes, as in production, share it.
func CertnodeBinary(t testing.TB, dir string, race bool) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("%s race=%v", abs, race)
	buildsMu.Lock()
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		out, err := os.MkdirTemp("", "certnode-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(out, "certnode")
		args := []string{"build", "-o", b.path}
		if race {
			args = append(args, "-race")
		}
		if msg, err := exec.Command("go", append(args, abs)...).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build: %v\n%s", err, msg)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// SelfSigned makes a certificate for 127.0.0.1 named cn, its own CA, and
// returns it with its PEM certificate and key.
func SelfSigned(t testing.TB, cn string) (cert tls.Certificate, certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// SecureKafka is the local broker that takes only TLS and SCRAM-SHA-512
// and authorizes by ACL (deploy/local/kafka-secure.sh), with what an
// administrator needs to reach it.
type SecureKafka struct {
	Addr          string
	CAFile        string // the CA its certificate is checked against
	AdminUser     string // a super user
	AdminPassword string
}

// SecureKafkaBroker finds the secure broker's state under
// $CERTNODE_TEST_KAFKA_SECURE_DIR, else kafka-secure in the local state
// folder (localDir), and checks it is reachable.
func SecureKafkaBroker(t testing.TB) SecureKafka {
	t.Helper()
	const how = "deploy/local/kafka-secure.sh start"
	dir := os.Getenv("CERTNODE_TEST_KAFKA_SECURE_DIR")
	if dir == "" {
		dir = filepath.Join(localDir(t), "kafka-secure")
	}
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("the secure Kafka is not set up: %v (start it with `%s`, or run `make test`)", err, how)
		}
		return strings.TrimSpace(string(b))
	}
	k := SecureKafka{Addr: read("bootstrap"), CAFile: filepath.Join(dir, "ca.pem"), AdminUser: "admin", AdminPassword: read("admin.password")}
	reachable(t, "the secure Kafka", k.Addr, how)
	return k
}

// Mailpit is the local SMTP server (deploy/local/mailpit.sh): its SMTP
// address (STARTTLS, authentication required), user, password, the CA of
// its certificate, and its REST API.
type Mailpit struct {
	SMTP, Username, Password, CAFile, API string
}

// MailpitServer reads $CERTNODE_LOCAL/mailpit/env and checks the server
// answers.
func MailpitServer(t testing.TB) Mailpit {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(localDir(t), "mailpit", "env"))
	if err != nil {
		t.Fatalf("mailpit is not set up: %v (run `make services` or deploy/local/mailpit.sh start)", err)
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vals[k] = v
		}
	}
	m := Mailpit{SMTP: vals["CERTNODE_TEST_SMTP"], Username: vals["CERTNODE_TEST_SMTP_USERNAME"], Password: vals["CERTNODE_TEST_SMTP_PASSWORD"],
		CAFile: vals["CERTNODE_TEST_SMTP_CA"], API: vals["CERTNODE_TEST_MAILPIT_API"]}
	reachable(t, "mailpit", m.SMTP, "deploy/local/mailpit.sh start")
	return m
}
