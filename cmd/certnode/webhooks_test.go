package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/certnode/certnode/internal/whsig"
)

// clearWebhookEnv keeps a developer's own CERTNODE_WEBHOOK_* settings out
// of the tests.
func clearWebhookEnv(t *testing.T) {
	for _, v := range []string{"SECRET", "SECRET_FILE", "ID", "TIMESTAMP", "SIGNATURE", "TOLERANCE", "BODY_FILE"} {
		t.Setenv("CERTNODE_WEBHOOK_"+v, "")
	}
}

func TestWebhooksVerify(t *testing.T) {
	clearWebhookEnv(t)
	old, cur := whsig.NewSecret(), whsig.NewSecret()
	body := `{"type":"receipt.signed","data":{"receipt_id":"abc"}}` + "\n"
	now := time.Now()
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := whsig.Sign("msg_2x", now, []byte(body), old, cur)
	args := func(secret string, extra ...string) []string {
		a := []string{"webhooks", "verify", "--id", "msg_2x", "--timestamp", ts, "--signature", sig}
		if secret != "" {
			a = append(a, "--secret", secret)
		}
		return append(a, extra...)
	}

	// Either secret of a rotation verifies the two-signature header.
	for _, s := range []whsig.Secret{old, cur} {
		if r := certnode(t, body, args(s.Encode())...); r.code != 0 || r.stdout != "valid\n" {
			t.Fatalf("valid delivery: %+v", r)
		}
	}
	bodyFile := filepath.Join(t.TempDir(), "body")
	os.WriteFile(bodyFile, []byte(body), 0o600)
	if r := certnode(t, "", args(cur.Encode(), "--body", bodyFile)...); r.code != 0 || r.stdout != "valid\n" {
		t.Fatalf("--body: %+v", r)
	}

	// Each failed check is named, with exit status 1 and nothing on stderr.
	stale := strconv.FormatInt(now.Add(-time.Hour).Unix(), 10)
	for _, c := range []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"body changed", strings.TrimSuffix(body, "\n"), args(cur.Encode()), "invalid: no_matching_signature ("},
		{"other secret", body, args(whsig.NewSecret().Encode()), "invalid: no_matching_signature ("},
		{"old timestamp", body, args(cur.Encode(), "--timestamp", stale), "invalid: timestamp_outside_tolerance (webhook-timestamp " + stale + " is 1h0m"},
		{"tight tolerance", body, args(cur.Encode(), "--timestamp", strconv.FormatInt(now.Unix()-3, 10), "--tolerance", "1s"), "invalid: timestamp_outside_tolerance ("},
		{"malformed timestamp", body, args(cur.Encode(), "--timestamp", "yesterday"), "invalid: malformed_header (webhook-timestamp is not an integer Unix time)"},
		{"malformed signature", body, args(cur.Encode(), "--signature", "g0hM9SsE"), "invalid: malformed_header (webhook-signature entry 1"},
	} {
		r := certnode(t, c.stdin, c.args...)
		if r.code != exitInvalid || !strings.HasPrefix(r.stdout, c.want) || r.stderr != "" {
			t.Errorf("%s: %+v, want exit 1 and %q", c.name, r, c.want)
		}
	}

	// The secret from the environment or a file, so that it stays out of ps.
	t.Setenv("CERTNODE_WEBHOOK_SECRET", old.Encode())
	if r := certnode(t, body, args("")...); r.code != 0 || r.stdout != "valid\n" {
		t.Fatalf("$CERTNODE_WEBHOOK_SECRET: %+v", r)
	}
	t.Setenv("CERTNODE_WEBHOOK_SECRET", "")
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte(cur.Encode()+"\n"), 0o600)
	t.Setenv("CERTNODE_WEBHOOK_SECRET_FILE", secretFile)
	if r := certnode(t, body, args("")...); r.code != 0 || r.stdout != "valid\n" {
		t.Fatalf("$CERTNODE_WEBHOOK_SECRET_FILE: %+v", r)
	}
	// A flag wins over the environment.
	if r := certnode(t, body, args(whsig.NewSecret().Encode())...); r.code != exitInvalid {
		t.Fatalf("--secret over $CERTNODE_WEBHOOK_SECRET_FILE: %+v", r)
	}
}

func TestWebhooksVerifyUsage(t *testing.T) {
	clearWebhookEnv(t)
	secret := whsig.NewSecret().Encode()
	full := []string{"--id", "msg_1", "--timestamp", "1700000000", "--signature", "v1,AAAA"}
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"nothing", nil, []string{"--secret or $CERTNODE_WEBHOOK_SECRET (or $CERTNODE_WEBHOOK_SECRET_FILE) is required",
			"--id is required", "--timestamp is required", "--signature is required"}},
		{"secret without prefix", append([]string{"--secret", strings.TrimPrefix(secret, "whsec_")}, full...), []string{"must start with whsec_"}},
		{"short secret", append([]string{"--secret", "whsec_c2hvcnQ="}, full...), []string{"5 bytes, want 24 to 64"}},
		{"zero tolerance", append([]string{"--secret", secret, "--tolerance", "0s"}, full...), []string{"--tolerance 0s: must be positive"}},
		{"missing body file", append([]string{"--secret", secret, "--body", filepath.Join(t.TempDir(), "none")}, full...), []string{"no such file"}},
		{"argument", append([]string{"--secret", secret, "extra"}, full...), []string{"unknown command"}},
	} {
		r := certnode(t, "{}", append([]string{"webhooks", "verify"}, c.args...)...)
		if r.code != exitUsage || r.stdout != "" {
			t.Errorf("%s: %+v, want exit 2", c.name, r)
		}
		for _, w := range c.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: stderr %q lacks %q", c.name, r.stderr, w)
			}
		}
		if strings.Contains(r.stderr, secret[6:]) {
			t.Errorf("%s: stderr shows the secret: %q", c.name, r.stderr)
		}
	}
	// Help names the secret's variables, the way to keep it out of ps.
	r := certnode(t, "", "webhooks", "verify", "--help")
	for _, w := range []string{"$CERTNODE_WEBHOOK_SECRET,", "$CERTNODE_WEBHOOK_SECRET_FILE"} {
		if r.code != 0 || !strings.Contains(r.stdout, w) {
			t.Errorf("help lacks %s: %+v", w, r)
		}
	}
}
