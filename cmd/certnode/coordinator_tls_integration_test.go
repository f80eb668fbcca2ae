//go:build integration

package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/testenv"
	"github.com/certnode/certnode/internal/tlsconf"
)

// Coordinators serving their API and Raft over TLS with a test CA: a
// second member joins through https:// and announces its own https:// URL
// (and replicates the writes that follow over Raft TLS); the admin
// CLI, an ingest node (its copy of the state, quota leases and accounts
// proxy) and a worker reach them with the CA, the worker's metrics
// listener serves TLS with the same flags, and a client without the CA is
// refused, as is TLS 1.1.
func TestCoordinatorTLS(t *testing.T) {
	_, certPEM, keyPEM := testenv.SelfSigned(t, "certnode test CA")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, certPEM, 0o600)
	os.WriteFile(key, keyPEM, 0o600)
	tlsFlags := []string{"--tls-cert", cert, "--tls-key", key}
	raftTLS := append([]string{"--raft-tls"}, tlsFlags...)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	e := newE2E(t, strings.Join(cluster.ListenAddrs(), ","))
	const admin, node = "admin-token-tls-0123456789", "node-token-tls-0123456789"
	e.env = append(e.env, "CERTNODE_ADMIN_TOKEN="+admin, "CERTNODE_NODE_TOKEN="+node, "CERTNODE_TENANTS_FILE=", "CERTNODE_COORDINATOR_CA="+cert)
	t.Setenv("CERTNODE_ADMIN_TOKEN", admin)

	c1, c2 := freeAddr(t), freeAddr(t)
	url1, url2 := "https://"+c1, "https://"+c2
	e.start("c1", append([]string{"coordinator", "--id", "c1", "--raft", freeAddr(t), "--http", c1, "--data", t.TempDir(), "--bootstrap"}, raftTLS...)...)
	adminCLI := func(args ...string) result {
		return certnode(t, "", append([]string{"admin", "--coordinator-ca", cert}, args...)...)
	}
	testenv.WaitFor(t, "c1 leads", 30*time.Second, func() (bool, string) {
		r := adminCLI("--coordinator", url1, "cluster")
		return r.code == 0 && strings.Contains(r.stdout, `"state":"Leader"`), fmt.Sprint(r)
	})
	e.start("c2", append([]string{"coordinator", "--id", "c2", "--raft", freeAddr(t), "--http", c2, "--data", t.TempDir(), "--join", url1}, raftTLS...)...)
	testenv.WaitFor(t, "c2 a member, both known by their https URLs", 30*time.Second, func() (bool, string) {
		r := adminCLI("--coordinator", url2, "cluster")
		var cl coordinator.Cluster
		json.Unmarshal([]byte(r.stdout), &cl)
		urls := map[string]string{}
		for _, m := range cl.Members {
			urls[m.ID] = m.HTTP
		}
		return urls["c1"] == url1 && urls["c2"] == url2, fmt.Sprint(r)
	})

	// Writes through the follower reach the leader over TLS.
	if r := adminCLI("--coordinator", url2, "orgs", "create", e.tenant, "--name", "TLS"); r.code != 0 {
		t.Fatalf("create the organization through c2: %+v", r)
	}
	r := adminCLI("--coordinator", url2, "keys", "create", e.tenant, "--scopes", "sign,verify")
	var created struct {
		Key string `json:"key"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &created, json.RejectUnknownMembers(false)) != nil || created.Key == "" {
		t.Fatalf("create a key: %+v", r)
	}
	e.apiKey = created.Key

	// A client without the CA, and TLS 1.1, are refused.
	if r := certnode(t, "", "admin", "--coordinator", url1, "orgs", "list"); r.code != exitUsage || !strings.Contains(r.stderr, "certificate signed by unknown authority") {
		t.Fatalf("the admin CLI without the CA: %+v", r)
	}
	clientTLS, err := tlsconf.Client(cert)
	if err != nil {
		t.Fatal(err)
	}
	tls11 := &tls.Config{RootCAs: clientTLS.RootCAs, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	if c, err := tls.Dial("tcp", c1, tls11); err == nil || !strings.Contains(err.Error(), "protocol version") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("TLS 1.1 to the coordinator: %v", err)
	}

	// The roles follow the cluster over TLS: a request signed through
	// ingest is authenticated by the coordinator's key and metered by its
	// leases; the worker's metrics answer over TLS.
	metrics := freeAddr(t)
	w := e.start("worker", append([]string{"worker", "--metrics", metrics, "--concurrency", "2", "--coordinator", url2 + "," + url1}, tlsFlags...)...)
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}, Timeout: 10 * time.Second}
	testenv.WaitFor(t, "the worker ready, over https", 60*time.Second, func() (bool, string) {
		resp, err := trusting.Get("https://" + metrics + "/readyz")
		if err != nil {
			return false, fmt.Sprint(err, w.output())
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200, string(b)
	})
	if c, err := tls.Dial("tcp", metrics, tls11); err == nil || !strings.Contains(err.Error(), "protocol version") {
		if c != nil {
			c.Close()
		}
		t.Fatalf("TLS 1.1 to the worker's metrics: %v", err)
	}
	e.ingest("--coordinator", url1)
	testenv.WaitFor(t, "a request signed with the coordinator's key", 30*time.Second, func() (bool, string) {
		code, body := e.do("POST", "/v1/sign", "application/json", `{"payload":{"coordinator":"tls"}}`)
		return code == 200 && strings.Contains(body, `"receipt_id"`), fmt.Sprint(code, body)
	})
	if code, body := e.do("GET", "/v1/me", "", ""); code != 401 || !strings.Contains(body, `"code":"unauthorized"`) {
		t.Fatalf("the accounts proxy: %d %s, want the coordinator's own refusal", code, body)
	}
}
