package testenv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
)

// ACME is a test ACME CA: Pebble (letsencrypt/pebble/v2), with its DNS
// answered by pebble-challtestsrv, which resolves every name to
// 127.0.0.1, so the CA's validations reach this machine only. Both bind
// 127.0.0.1; deploy/local/services.sh installs them.
type ACME struct {
	// Directory is the ACME directory URL; ServerCA the PEM file of the
	// CA of Pebble's own TLS certificate (--acme-ca-root).
	Directory string
	ServerCA  string
	// HTTPPort is the port the CA's HTTP-01 validations connect to.
	HTTPPort int
	// DNS is the DNS server (host:port) holding the test's TXT records.
	DNS string

	mgmt, chall string
	client      *http.Client
	out         *syncBuffer
}

// Profile validity: what Pebble gives the certificates it issues.
const acmeValidity = 600 * time.Second

// StartACME starts Pebble and its DNS server for t, on free loopback
// ports; they stop when t ends. Their certificates live acmeValidity
// (ACMEValidity).
func StartACME(t testing.TB) *ACME {
	t.Helper()
	pebble, chall := goTool(t, "pebble"), goTool(t, "pebble-challtestsrv")
	dir := t.TempDir()
	cert, certPEM, keyPEM := SelfSigned(t, "pebble")
	a := &ACME{ServerCA: filepath.Join(dir, "ca.pem"), HTTPPort: freePort(t), out: &syncBuffer{}}
	for name, b := range map[string][]byte{"ca.pem": certPEM, "key.pem": keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(mustLeaf(t, cert))
	a.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	dnsPort := freePort(t)
	a.DNS, a.chall = "127.0.0.1:"+strconv.Itoa(dnsPort), "127.0.0.1:"+strconv.Itoa(freePort(t))
	// Every default listener of challtestsrv is off but DNS and its
	// management API; AAAA answers are off, so the CA dials 127.0.0.1.
	start(t, "pebble-challtestsrv", io.Discard, exec.Command(chall, "-dnsserver", a.DNS, "-management", a.chall,
		"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""))
	WaitFor(t, "pebble-challtestsrv", 20*time.Second, func() (bool, string) {
		c, err := net.Dial("tcp", a.chall)
		if err == nil {
			c.Close()
		}
		return err == nil, fmt.Sprint(err)
	})

	listen, mgmt := "127.0.0.1:"+strconv.Itoa(freePort(t)), "127.0.0.1:"+strconv.Itoa(freePort(t))
	a.Directory, a.mgmt = "https://"+listen+"/dir", "https://"+mgmt
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress": listen, "managementListenAddress": mgmt,
		"certificate": filepath.Join(dir, "ca.pem"), "privateKey": filepath.Join(dir, "key.pem"),
		"httpPort": a.HTTPPort, "tlsPort": freePort(t), "ocspResponderURL": "", "externalAccountBindingRequired": false,
		"keyAlgorithm": "ecdsa", "retryAfter": map[string]int{"authz": 1, "order": 1},
		"profiles": map[string]any{"default": map[string]any{"description": "test", "validityPeriod": int(acmeValidity / time.Second)}},
	}}
	b, _ := json.Marshal(conf)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pebble, "-config", cfgFile, "-dnsserver", a.DNS)
	// No random sleeps before validations, no refused nonces, no reused
	// authorizations: every order is validated, promptly.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	start(t, "pebble", a.out, cmd)
	WaitFor(t, "pebble", 20*time.Second, func() (bool, string) {
		resp, err := a.client.Get(a.Directory)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return a
}

// ACMEValidity is how long the test CA's certificates live.
func ACMEValidity() time.Duration { return acmeValidity }

// Roots is Pebble's issuing root (made anew at each start): what a client
// of the certificates it issued trusts.
func (a *ACME) Roots(t testing.TB) *x509.CertPool {
	t.Helper()
	b := a.get(t, "/roots/0")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble root: %s", b)
	}
	return pool
}

// Issued counts the certificates the CA issued.
func (a *ACME) Issued() int { return strings.Count(a.out.String(), "Issued certificate serial") }

// Log is the CA's output.
func (a *ACME) Log() string { return a.out.String() }

// CertStatus is "Valid" or "Revoked", for a certificate's serial (hex).
func (a *ACME) CertStatus(t testing.TB, serial string) string {
	t.Helper()
	var st struct {
		Status string `json:"Status"`
	}
	if err := json.Unmarshal(a.get(t, "/cert-status-by-serial/"+serial), &st, json.RejectUnknownMembers(false)); err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// SetTXT publishes a TXT record (name without the trailing dot).
func (a *ACME) SetTXT(t testing.TB, name, value string) {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"host": name + ".", "value": value})
	resp, err := http.Post("http://"+a.chall+"/set-txt", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("set-txt: %s", resp.Status)
	}
}

func (a *ACME) get(t testing.TB, path string) []byte {
	t.Helper()
	resp, err := a.client.Get(a.mgmt + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pebble %s: %s %v %s", path, resp.Status, err, b)
	}
	return b
}

// goTool finds a Go program deploy/local/services.sh installed.
func goTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s is not installed (deploy/local/services.sh up installs it; run `make test`)", name)
	return ""
}

// start runs cmd until t ends, its output to out.
func start(t testing.TB, name string, out io.Writer, cmd *exec.Cmd) {
	t.Helper()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
}

func freePort(t testing.TB) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(FreeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

// FreeAddr is a free loopback address for a server of the test, its port
// taken below the kernel's ephemeral range: a port the kernel hands out
// (for another test's outgoing connection or ":0" listener) between this
// check and the server's bind would fail the server, as it did for a
// Kafka broker once the test processes grew in number.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	for range 200 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+mathrand.IntN(low-10000))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

func mustLeaf(t testing.TB, c tls.Certificate) *x509.Certificate {
	t.Helper()
	l, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// syncBuffer is a buffer written by a process and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
