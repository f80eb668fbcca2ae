package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"

	"github.com/certnode/certnode/analytics"
	"github.com/certnode/certnode/exports"
	"github.com/certnode/certnode/schemas"
	"github.com/certnode/certnode/signer"
	"github.com/certnode/certnode/sinks/detect"
	"github.com/certnode/certnode/transparency"
)

func newComplianceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "compliance", Short: "Evidence of the deployment's controls, for auditors"}
	cmd.AddCommand(newEvidenceCmd(), newProcessingCmd())
	return cmd
}

// maxEvidenceEvents bounds each list of events in a bundle.
const maxEvidenceEvents = 100_000

func newEvidenceCmd() *cobra.Command {
	var kf keyFlags
	var period, keyring, logURL, auditURL, out string
	var cf coordinatorFlags
	var chf clickhouseFlags
	cmd := &cobra.Command{
		Use:   "evidence",
		Short: "Write a signed SOC 2 evidence bundle for a period",
		Long: "Collects the evidence of a period (2026-Q3, 2026-11 or 2026) and signs it as a CertNode receipt whose\n" +
			"payload it is: the access review (organizations, users and roles, API and producer keys with their\n" +
			"last use) from the coordinator (--coordinator, $CERTNODE_ADMIN_TOKEN); the change history, erasures\n" +
			"and security alerts of the period, and each organization's availability, from ClickHouse\n" +
			"(--clickhouse); the signing keys' rotations from the workers' key ring (--workers-keyring DIR);\n" +
			"the latest checkpoints of the transparency and audit logs (--log, --audit-log). A source left out\n" +
			"is named under missing. It is signed by --keyring, --key or an HSM key (--pkcs11-*).\n" +
			"Check it with certnode verify --receipt FILE --jwks JWKS. Software supplies controls and evidence,\n" +
			"not certification: see docs/compliance/soc2.md.\n\n" + pinHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			from, to, err := parsePeriod(period)
			if err != nil {
				return usageErr("--period: %v", err)
			}
			if cf.addrs == "" {
				return usageErr("--coordinator is required: the access review comes from there")
			}
			ring, release, err := kf.ring()
			if err != nil {
				return err
			}
			defer release()
			ctx := cmd.Context()
			b := &schemas.EvidenceBundle{Type: schemas.EvidenceBundleType, Version: 1, Period: period, From: from, To: to,
				GeneratedAt: time.Now().UTC(), ChangeHistory: []map[string]any{}, KeyRotations: []schemas.EvidenceKey{},
				Erasures: []map[string]any{}, SecurityEvents: []map[string]any{}, Blocks: []map[string]any{},
				Availability: []schemas.EvidenceAvailability{}, Checkpoints: map[string]string{}, Omitted: map[string]int{}, Missing: []string{}}
			c, err := cf.admin()
			if err != nil {
				return err
			}
			orgs, err := accessReview(ctx, c, b)
			if err != nil {
				return err
			}
			if chf.addr == "" {
				b.Missing = append(b.Missing, "clickhouse: change history, erasures, security alerts, availability")
			} else if err := storeEvidence(ctx, chf, orgs, b); err != nil {
				return err
			}
			if keyring == "" {
				b.Missing = append(b.Missing, "keyring: key rotations")
			} else if err := keyRotations(keyring, b); err != nil {
				return usageErr("--workers-keyring: %v", err)
			}
			for name, u := range map[string]string{"transparency_log": logURL, "audit_log": auditURL} {
				if u == "" {
					b.Missing = append(b.Missing, name)
					continue
				}
				c, err := transparency.NewClient(u, "", nil)
				if err == nil {
					var raw []byte
					if raw, err = c.Checkpoint(ctx); err == nil {
						b.Checkpoints[name] = string(raw)
					}
				}
				if err != nil {
					return &exitError{code: exitUsage, err: fmt.Errorf("%s %s: %w", name, u, err)}
				}
			}
			payload, err := json.Marshal(b, json.Deterministic(true))
			if err != nil {
				return err
			}
			rc, err := ring.Sign(ctx, payload)
			if err != nil {
				return &exitError{code: exitInvalid, err: fmt.Errorf("signing the bundle: %w", err)}
			}
			signed, err := rc.Marshal()
			if err != nil {
				return err
			}
			signed = append(signed, '\n')
			if out == "" {
				_, err = cmd.OutOrStdout().Write(signed)
				return err
			}
			if err := os.WriteFile(out, signed, 0o600); err != nil {
				return usageErr("%v", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "certnode: evidence of %s written to %s (receipt %s); missing: %v\n", period, out, rc.ReceiptID, b.Missing)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&period, "period", "", "the period: a quarter (2026-Q3), a month (2026-11) or a year (2026), UTC")
	bindEnv(fs, "period", "CERTNODE_EVIDENCE_PERIOD")
	cf.register(fs, "", "a coordinator's HTTP address, read with $CERTNODE_ADMIN_TOKEN")
	chf.register(fs, "", "ClickHouse native address")
	fs.StringVar(&keyring, "workers-keyring", "", "the workers' key ring directory, whose ring.json records the signing keys' rotations")
	bindEnv(fs, "workers-keyring", "CERTNODE_EVIDENCE_KEYRING")
	fs.StringVar(&logURL, "log", "", "the transparency log's address, for its latest checkpoint")
	bindEnv(fs, "log", "CERTNODE_LOG_URL")
	fs.StringVar(&auditURL, "audit-log", "", "the audit log's address, for its latest checkpoint")
	bindEnv(fs, "audit-log", "CERTNODE_AUDIT_LOG_URL")
	fs.StringVar(&out, "out", "", "write the signed bundle here (default stdout)")
	bindEnv(fs, "out", "CERTNODE_EVIDENCE_OUT")
	kf.register(fs, true)
	return cmd
}

var periodPattern = regexp.MustCompile(`^(\d{4})(?:-Q([1-4])|-(\d{2}))?$`)

// parsePeriod reads a year, a quarter or a month, in UTC.
func parsePeriod(p string) (from, to time.Time, err error) {
	m := periodPattern.FindStringSubmatch(p)
	if m == nil {
		return from, to, fmt.Errorf("%q: want a quarter (2026-Q3), a month (2026-11) or a year (2026)", p)
	}
	year, _ := strconv.Atoi(m[1])
	from, to = time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(year+1, 1, 1, 0, 0, 0, 0, time.UTC)
	switch {
	case m[2] != "":
		q, _ := strconv.Atoi(m[2])
		from = time.Date(year, time.Month(3*q-2), 1, 0, 0, 0, 0, time.UTC)
		to = from.AddDate(0, 3, 0)
	case m[3] != "":
		month, _ := strconv.Atoi(m[3])
		if month < 1 || month > 12 {
			return from, to, fmt.Errorf("%q: no month %d", p, month)
		}
		from = time.Date(year, time.Month(month), 1, 0, 0, 0, 0, time.UTC)
		to = from.AddDate(0, 1, 0)
	}
	if from.After(time.Now()) {
		return from, to, fmt.Errorf("%q has not begun", p)
	}
	return from, to, nil
}

// accessReview fills the access review from the coordinator's admin API
// and returns the organizations' ids.
func accessReview(ctx context.Context, c *adminClient, b *schemas.EvidenceBundle) ([]string, error) {
	token, err := requiredSecret("CERTNODE_ADMIN_TOKEN")
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	get := func(path, member string) ([]map[string]any, error) {
		out, err := c.call(ctx, token, "GET", path, nil)
		if err != nil {
			return nil, err
		}
		var list map[string][]map[string]any
		if err := json.Unmarshal(out, &list, json.RejectUnknownMembers(false)); err != nil {
			return nil, fmt.Errorf("the coordinator's %s did not parse: %w", path, err)
		}
		if list[member] == nil {
			return []map[string]any{}, nil
		}
		return list[member], nil
	}
	a := &b.AccessReview
	if a.Organizations, err = get("/v1/admin/orgs", "orgs"); err != nil {
		return nil, err
	}
	if a.Users, err = get("/v1/admin/users", "users"); err != nil {
		return nil, err
	}
	if b.Blocks, err = get("/v1/admin/blocks", "blocks"); err != nil {
		return nil, err
	}
	a.APIKeys, a.ProducerKeys = []map[string]any{}, []map[string]any{}
	var ids []string
	for _, o := range a.Organizations {
		id := fmt.Sprint(o["id"])
		ids = append(ids, id)
		keys, err := get("/v1/admin/orgs/"+url.PathEscape(id)+"/keys", "keys")
		if err != nil {
			return nil, err
		}
		pks, err := get("/v1/admin/orgs/"+url.PathEscape(id)+"/producer-keys", "producer_keys")
		if err != nil {
			return nil, err
		}
		a.APIKeys, a.ProducerKeys = append(a.APIKeys, keys...), append(a.ProducerKeys, pks...)
	}
	return ids, nil
}

// storeEvidence fills what ClickHouse holds: the change history, erasures
// and alerts of the period, and each organization's availability.
func storeEvidence(ctx context.Context, chf clickhouseFlags, orgs []string, b *schemas.EvidenceBundle) error {
	o, err := chf.options()
	if err != nil {
		return err
	}
	key := make([]byte, exports.MinCursorKeyBytes) // no cursor leaves this process
	rand.Read(key)
	ex, err := exports.Open(ctx, o, exports.Config{CursorKey: key})
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	defer ex.Close()
	for _, part := range []struct {
		name string
		q    exports.AuditQuery
		into *[]map[string]any
	}{
		{"change_history", exports.AuditQuery{AllOrgs: true, From: b.From, To: b.To, Source: "coordinator"}, &b.ChangeHistory},
		{"erasures", exports.AuditQuery{AllOrgs: true, From: b.From, To: b.To, ActionPrefix: "erasure."}, &b.Erasures},
		{"security_events", exports.AuditQuery{AllOrgs: true, From: b.From, To: b.To, Action: detect.ActionAlert}, &b.SecurityEvents},
	} {
		err := ex.AuditEvents(ctx, part.q, func(ev []byte) error {
			if len(*part.into) >= maxEvidenceEvents {
				b.Omitted[part.name]++
				return nil
			}
			var m map[string]any
			if err := json.Unmarshal(ev, &m); err != nil {
				return err
			}
			*part.into = append(*part.into, m)
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", part.name, err)
		}
	}
	r, err := analytics.Open(ctx, o)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	defer r.Close()
	to := b.To // a period still running: up to the hour in progress
	if end := time.Now().UTC().Truncate(time.Hour).Add(time.Hour); end.Before(to) {
		to = end
	}
	for _, org := range orgs {
		s, err := r.Summary(ctx, org, b.From, to)
		if err != nil {
			return fmt.Errorf("availability of %s: %w", org, err)
		}
		a := schemas.EvidenceAvailability{Org: org, Requests: s.Requests, Failed: s.Failed, LatencyMillis: s.LatencyMillis}
		if s.Requests > 0 {
			a.SuccessRatio = float64(s.Requests-s.Failed) / float64(s.Requests)
		}
		b.Availability = append(b.Availability, a)
	}
	return nil
}

// keyRotations fills the signing keys of the ring at dir.
func keyRotations(dir string, b *schemas.EvidenceBundle) error {
	f, err := signer.ReadRingFile(dir)
	if err != nil {
		return err
	}
	if len(f.Keys) == 0 {
		return errors.New("the ring holds no key")
	}
	for _, k := range f.Keys {
		b.KeyRotations = append(b.KeyRotations, schemas.EvidenceKey{Kid: k.Kid, Alg: k.JWK.KeyAlg(), State: f.State(k), Source: k.Source,
			CreatedAt: k.CreatedAt, RetiredAt: k.RetiredAt})
	}
	return nil
}
