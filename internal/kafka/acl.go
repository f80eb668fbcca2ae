package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/certnode/certnode/schemas"
)

// Role is a CertNode role that talks to Kafka, each meant to run as its
// own Kafka user holding only its Grant.
type Role string

// The roles, named as certnode kafka grant --role takes them.
const (
	RoleIngest         Role = "ingest"
	RoleWorker         Role = "worker"
	RoleSinkClickHouse Role = "sink-clickhouse"
	RoleSinkUsage      Role = "sink-usage"
	RoleDispatcher     Role = "dispatcher"
	RoleLog            Role = "log"       // certnode log serve (the transparency log)
	RoleAuditLog       Role = "audit-log" // certnode log serve --kind audit
	RoleDetect         Role = "detect"
	RoleCoordinator    Role = "coordinator" // with --kafka: relays audit events
	RoleMailer         Role = "mailer"      // mails the events of certnode.events
)

// Roles lists every role.
func Roles() []Role {
	return []Role{RoleIngest, RoleWorker, RoleSinkClickHouse, RoleSinkUsage, RoleDispatcher, RoleLog, RoleAuditLog, RoleDetect, RoleCoordinator, RoleMailer}
}

// groupSuffix names each consuming role's consumer group after the topic
// prefix (certnode-workers...): the roles join these, the grants allow them.
var groupSuffix = map[Role]string{
	RoleWorker:         "-workers",
	RoleSinkClickHouse: "-sink-clickhouse",
	RoleSinkUsage:      "-sink-usage",
	RoleDispatcher:     "-dispatcher",
	RoleLog:            "-translog",
	RoleAuditLog:       "-auditlog",
	RoleDetect:         "-detect",
	RoleMailer:         "-mailer",
}

// Group is the consumer group role's processes share under prefix ("" for
// a role that joins none).
func Group(prefix string, role Role) string {
	if s, ok := groupSuffix[role]; ok {
		return prefix + s
	}
	return ""
}

// DelayGroup is the second group a dispatcher joins, for its delay topics.
func DelayGroup(group string) string { return group + "-delay" }

// Grant is what a role does on the brokers, so all its user may do.
type Grant struct {
	Read   []string // topics it consumes (with or without a group)
	Write  []string // topics it produces to
	Groups []string // consumer groups it joins and commits in
}

// GrantFor is role's grant under the topic prefix. It follows what each
// role's code does; the secure-broker integration test runs every role
// with nothing more.
func GrantFor(role Role, prefix string) (Grant, error) {
	t := schemas.TopicsFor(prefix)
	var g Grant
	switch role {
	case RoleIngest:
		// Results and job states read back by partition, events tailed
		// for the webhook listeners: no group.
		g = Grant{Read: []string{t.Receipts, t.Jobs, t.Events},
			Write: []string{t.Requests, t.Jobs, t.Events, t.Webhooks, t.Audit}}
	case RoleWorker:
		g = Grant{Read: []string{t.Requests}, Write: []string{t.Receipts, t.DLQ, t.Audit}}
	case RoleSinkClickHouse:
		// Audit: retention (--coordinator) records its erasures.
		g = Grant{Read: []string{t.Receipts, t.Usage, t.WebhookAttempts, t.Audit}, Write: []string{t.DLQ, t.Audit}}
	case RoleSinkUsage:
		g = Grant{Read: []string{t.Receipts}, Write: []string{t.Usage}}
	case RoleDispatcher:
		// Delayed messages come due onto webhooks or a shorter delay; the
		// attempts are read back (no group) to skip what was delivered.
		g = Grant{Read: append([]string{t.Receipts, t.Events, t.Jobs, t.Webhooks, t.WebhookAttempts}, t.WebhookDelays...),
			Write: append([]string{t.Webhooks, t.WebhookDLQ, t.WebhookAttempts, t.Events}, t.WebhookDelays...)}
	case RoleLog:
		g = Grant{Read: []string{t.Receipts}}
	case RoleAuditLog:
		g = Grant{Read: []string{t.Audit}}
	case RoleDetect:
		g = Grant{Read: []string{t.Audit, t.Receipts, t.WebhookAttempts}, Write: []string{t.Audit, t.Events}}
	case RoleCoordinator:
		g = Grant{Write: []string{t.Audit}}
	case RoleMailer:
		g = Grant{Read: []string{t.Events}}
	default:
		return Grant{}, fmt.Errorf("kafka: unknown role %q (want one of %v)", role, Roles())
	}
	if group := Group(prefix, role); group != "" {
		g.Groups = append(g.Groups, group)
		if role == RoleDispatcher {
			g.Groups = append(g.Groups, DelayGroup(group))
		}
	}
	return g, nil
}

// acls are g's ACL bindings for principal. Read and Write imply Describe;
// every role also gets Describe on all of prefix's topics, which lets it
// start when an administrator created them (EnsureTopics checks each one
// exists) without letting it read or write them. Nobody but the
// administrator creates topics.
func (g Grant) acls(principal, prefix string) []*kadm.ACLBuilder {
	allow := func() *kadm.ACLBuilder { return kadm.NewACLs().Allow(principal).AllowHosts("*") }
	out := []*kadm.ACLBuilder{
		allow().Topics(prefix + ".").ResourcePatternType(kadm.ACLPatternPrefixed).Operations(kadm.OpDescribe),
	}
	if len(g.Read) > 0 {
		out = append(out, allow().Topics(g.Read...).ResourcePatternType(kadm.ACLPatternLiteral).Operations(kadm.OpRead))
	}
	if len(g.Write) > 0 {
		out = append(out, allow().Topics(g.Write...).ResourcePatternType(kadm.ACLPatternLiteral).Operations(kadm.OpWrite))
	}
	if len(g.Groups) > 0 {
		out = append(out, allow().Groups(g.Groups...).ResourcePatternType(kadm.ACLPatternLiteral).Operations(kadm.OpRead))
	}
	return out
}

// SCRAMUser is a Kafka user's SCRAM credential. Its password stays out of
// logs and serialized forms.
type SCRAMUser struct {
	Name      string
	Mechanism string // SCRAM-SHA-256 or SCRAM-SHA-512
	Password  string `json:"-"`
}

// String names the user without its password, for fmt and slog alike.
func (u SCRAMUser) String() string { return u.Name + " (" + u.Mechanism + ")" }

// LogValue keeps slog from printing the fields.
func (u SCRAMUser) LogValue() slog.Value { return slog.StringValue(u.String()) }

// Applied is what ApplyGrant did, for the operator.
type Applied struct {
	ACLs []string // "ALLOW User:ingest READ TOPIC certnode.receipts (LITERAL)"
	// PasswordSet says the user's SCRAM credential was created or replaced.
	PasswordSet bool
}

// ApplyGrant gives user role's grant under prefix, through an
// administrator's client: its SCRAM credential when user.Password is set
// (else the user's credential is left as it is), then the ACLs. Applying
// again is harmless: the broker keeps one copy of each ACL.
func ApplyGrant(ctx context.Context, adm *kadm.Client, role Role, prefix string, user SCRAMUser) (Applied, error) {
	var done Applied
	g, err := GrantFor(role, prefix)
	if err != nil {
		return done, err
	}
	if user.Name == "" {
		return done, errors.New("kafka: a grant needs a user")
	}
	if user.Password != "" {
		mech, err := scramMechanism(user.Mechanism)
		if err != nil {
			return done, err
		}
		res, err := adm.AlterUserSCRAMs(ctx, nil, []kadm.UpsertSCRAM{{User: user.Name, Mechanism: mech, Iterations: 8192, Password: user.Password}})
		if err == nil {
			err = res.Error()
		}
		if err != nil {
			return done, fmt.Errorf("kafka: SCRAM credential of %s: %w", user.Name, err)
		}
		done.PasswordSet = true
	}
	for _, b := range g.acls("User:"+user.Name, prefix) {
		res, err := adm.CreateACLs(ctx, b)
		if err != nil {
			return done, fmt.Errorf("kafka: ACLs of %s: %w", user.Name, err)
		}
		for _, r := range res {
			if r.Err != nil {
				return done, fmt.Errorf("kafka: ACL %s %s on %s: %w", r.Operation, r.Principal, r.Name, r.Err)
			}
			done.ACLs = append(done.ACLs, fmt.Sprintf("ALLOW %s %s %s %s (%s)", r.Principal, r.Operation, r.Type, r.Name, r.Pattern))
		}
	}
	slices.Sort(done.ACLs)
	return done, nil
}

func scramMechanism(name string) (kadm.ScramMechanism, error) {
	switch name {
	case "SCRAM-SHA-256":
		return kadm.ScramSha256, nil
	case "SCRAM-SHA-512", "":
		return kadm.ScramSha512, nil
	}
	return 0, fmt.Errorf("kafka: SCRAM mechanism %q: want SCRAM-SHA-256 or SCRAM-SHA-512", name)
}
