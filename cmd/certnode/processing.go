package main

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/certnode/certnode/internal/chconn"
	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// ProcessingRecord is a record of processing (GDPR article 30) as the
// running deployment shows it: what it stores, where, for how long, and
// to whom it sends it.
type ProcessingRecord struct {
	Type          string            `json:"type"`
	GeneratedAt   time.Time         `json:"generated_at"`
	Stores        []ProcessingStore `json:"stores"`
	Organizations []ProcessingOrg   `json:"organizations"`
	Missing       []string          `json:"missing"`
}

// ProcessingStore is one place data is kept.
type ProcessingStore struct {
	Name      string `json:"name"`
	Holds     string `json:"holds"`
	Personal  bool   `json:"personal_data"`
	Retention string `json:"retention"`
	Size      string `json:"size,omitempty"`
}

// ProcessingOrg is an organization's own settings: how long its data is
// kept, and where its webhooks send it.
type ProcessingOrg struct {
	ID            string   `json:"id"`
	RetentionDays int      `json:"retention_days"`
	Recipients    []string `json:"webhook_recipients"`
}

// topicHolds says what each topic carries.
func topicHolds(t schemas.Topics) map[string]ProcessingStore {
	payloads := "requests' payloads as clients sent them, with their organization and key id"
	out := map[string]ProcessingStore{
		t.Requests:        {Holds: payloads, Personal: true},
		t.Receipts:        {Holds: "each result with its receipt (the payload)", Personal: true},
		t.DLQ:             {Holds: "refused records as sent, with the reason", Personal: true},
		t.Jobs:            {Holds: "bulk jobs' state and results (compacted)", Personal: true},
		t.Usage:           {Holds: "usage events: request ids, key ids, sizes; no payload"},
		t.Events:          {Holds: "webhook events not made from a result (no payload)"},
		t.Webhooks:        {Holds: "webhook messages due (receipts, so payloads)", Personal: true},
		t.WebhookDLQ:      {Holds: "webhook messages that exhausted their retries", Personal: true},
		t.WebhookAttempts: {Holds: "webhook attempts with response bodies and the message body", Personal: true},
		t.Audit:           {Holds: "audit events: who (user and key ids), what, when, from which IP address", Personal: true},
	}
	for _, d := range t.WebhookDelays {
		out[d] = ProcessingStore{Holds: "webhook messages waiting for their retry (receipts, so payloads)", Personal: true}
	}
	return out
}

// tableHolds says what each ClickHouse table holds, and for how long.
var tableHolds = []ProcessingStore{
	{Name: schemas.ClickHouseResultsTable, Holds: "every result with its receipt (the payload, encrypted per organization: AES-256-GCM, keys wrapped in the HSM)", Personal: true,
		Retention: "each organization's retention_days (below); kept otherwise"},
	{Name: schemas.ClickHouseWebhookAttemptsTable, Holds: "webhook attempts: URLs, receivers' response bodies and message bodies (receipts), both encrypted per organization", Personal: true,
		Retention: "each organization's retention_days (below); kept otherwise"},
	{Name: schemas.ClickHouseWebhookMessagesTable, Holds: "webhook messages' outcomes (no body)", Retention: "each organization's retention_days"},
	{Name: schemas.ClickHouseUsageTable, Holds: "usage events: request ids, key ids, sizes", Retention: "kept: invoices are built from them"},
	{Name: schemas.ClickHouseAuditTable, Holds: "audit events: user and key ids, actions, IP addresses", Personal: true,
		Retention: "kept: the record the audit log proves"},
}

// fixedStores are stores whose content the code fixes.
var fixedStores = []ProcessingStore{
	{Name: "transparency log (certnode log serve)", Holds: "one leaf per receipt: its receipt_id, a hash; no payload", Retention: "kept: append-only"},
	{Name: "audit log (certnode log serve --kind audit)", Holds: "one leaf per audit event: a keyed organization tag, times and the event's hash",
		Retention: "kept: append-only"},
	{Name: "coordinator (Raft state)", Holds: "organizations, users (emails, names, argon2id password hashes), sessions, API key hashes, webhook endpoints and secrets",
		Personal: true, Retention: "until deleted; sessions 12 hours"},
	{Name: "export files (--exports-dir)", Holds: "exports asked for, as files", Personal: true, Retention: "until their link expires"},
}

func newProcessingCmd() *cobra.Command {
	var kf kafkaFlags
	var cf coordinatorFlags
	var chf clickhouseFlags
	cmd := &cobra.Command{
		Use:   "processing",
		Short: "Print the record of processing (what is stored, where, how long) from the running deployment",
		Long: "Prints, as JSON, what the deployment stores and where: each Kafka topic with its retention (--kafka),\n" +
			"each ClickHouse table with its size (--clickhouse), the logs and the coordinator, and each\n" +
			"organization's retention setting and webhook recipients (--coordinator, $CERTNODE_ADMIN_TOKEN).\n" +
			"A source left out is named under missing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			rec := ProcessingRecord{Type: "certnode.record-of-processing", GeneratedAt: time.Now().UTC(), Stores: []ProcessingStore{},
				Organizations: []ProcessingOrg{}, Missing: []string{}}
			kcfg := kf.config()
			if len(kcfg.Brokers) == 0 {
				rec.Missing = append(rec.Missing, "kafka: the topics' retention")
			} else if err := topicStores(ctx, kcfg, &rec); err != nil {
				return usageErr("--kafka: %v", err)
			}
			if chf.addr == "" {
				rec.Missing = append(rec.Missing, "clickhouse: the tables' sizes")
				rec.Stores = append(rec.Stores, tableHolds...)
			} else if o, err := chf.options(); err != nil {
				return err
			} else if err := tableStores(ctx, o, &rec); err != nil {
				return usageErr("--clickhouse: %v", err)
			}
			rec.Stores = append(rec.Stores, fixedStores...)
			if cf.addrs == "" {
				rec.Missing = append(rec.Missing, "coordinator: organizations' retention and webhook recipients")
			} else if c, err := cf.admin(); err != nil {
				return err
			} else if err := processingOrgs(ctx, c, &rec); err != nil {
				return err
			}
			b, err := json.Marshal(rec, json.Deterministic(true))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	}
	fs := cmd.Flags()
	cf.register(fs, "", "a coordinator's HTTP address, read with $CERTNODE_ADMIN_TOKEN")
	chf.register(fs, "", "ClickHouse native address")
	kf.register(fs, true)
	return cmd
}

// topicStores describes each topic with its retention as the brokers
// hold it.
func topicStores(ctx context.Context, kcfg kafka.Config, rec *ProcessingRecord) error {
	cl, err := kafka.NewClient(kcfg)
	if err != nil {
		return err
	}
	defer cl.Close()
	holds := topicHolds(kcfg.Topics())
	names := slices.Sorted(maps.Keys(holds))
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	configs, err := kadm.NewClient(cl).DescribeTopicConfigs(cctx, names...)
	if err != nil {
		return err
	}
	for _, c := range configs {
		s := holds[c.Name]
		s.Name = "Kafka topic " + c.Name
		s.Retention = "absent: the topic does not exist"
		if c.Err == nil {
			s.Retention = "broker default"
			for _, kv := range c.Configs {
				if kv.Key == "retention.ms" && kv.Value != nil {
					s.Retention = retentionText(*kv.Value)
				}
				if kv.Key == "cleanup.policy" && kv.Value != nil && *kv.Value == "compact" {
					s.Retention = "compacted: the latest record per key is kept"
				}
			}
		}
		rec.Stores = append(rec.Stores, s)
	}
	return nil
}

// retentionText reads retention.ms.
func retentionText(ms string) string {
	n, err := strconv.ParseInt(ms, 10, 64)
	switch {
	case err != nil:
		return "retention.ms=" + ms
	case n < 0:
		return "kept: no time limit (retention.ms=-1)"
	}
	return fmt.Sprintf("%s (retention.ms=%d)", time.Duration(n)*time.Millisecond, n)
}

// tableStores describes each table with its size.
func tableStores(ctx context.Context, o chconn.Options, rec *ProcessingRecord) error {
	conn, err := chconn.Open(ctx, o)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, s := range tableHolds {
		var rows, bytes uint64
		db, table, _ := strings.Cut(s.Name, ".")
		if err := conn.QueryRow(ctx, "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE database = ? AND table = ? AND active", db, table).Scan(&rows, &bytes); err != nil {
			return err
		}
		s.Name = "ClickHouse table " + s.Name
		s.Size = fmt.Sprintf("%d rows, %d bytes on disk", rows, bytes)
		rec.Stores = append(rec.Stores, s)
	}
	return nil
}

// processingOrgs lists each organization's retention and webhook
// recipients (the endpoints' hosts).
func processingOrgs(ctx context.Context, c *adminClient, rec *ProcessingRecord) error {
	token, err := requiredSecret("CERTNODE_ADMIN_TOKEN")
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	var orgs struct {
		Orgs []struct {
			ID       string `json:"id"`
			Settings struct {
				RetentionDays int `json:"retention_days"`
			} `json:"settings"`
		} `json:"orgs"`
	}
	out, err := c.call(ctx, token, "GET", "/v1/admin/orgs", nil)
	if err == nil {
		err = json.Unmarshal(out, &orgs, json.RejectUnknownMembers(false))
	}
	if err != nil {
		return err
	}
	for _, o := range orgs.Orgs {
		var eps struct {
			Endpoints []struct {
				URL string `json:"url"`
			} `json:"endpoints"`
		}
		out, err := c.call(ctx, token, "GET", "/v1/orgs/"+url.PathEscape(o.ID)+"/webhooks/endpoints", nil)
		if err == nil {
			err = json.Unmarshal(out, &eps, json.RejectUnknownMembers(false))
		}
		if err != nil {
			return err
		}
		p := ProcessingOrg{ID: o.ID, RetentionDays: o.Settings.RetentionDays, Recipients: []string{}}
		for _, e := range eps.Endpoints {
			if u, err := url.Parse(e.URL); err == nil && !slices.Contains(p.Recipients, u.Host) {
				p.Recipients = append(p.Recipients, u.Host)
			}
		}
		rec.Organizations = append(rec.Organizations, p)
	}
	return nil
}
