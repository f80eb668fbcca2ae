package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/internal/tenants"
)

// adminClient calls a coordinator's admin API; any member answers (writes
// are forwarded to the leader).
type adminClient struct {
	addr, ca string
	http     *http.Client
}

// connect makes the HTTP client, once: an https:// coordinator's
// certificate is checked against ca (empty: the system's roots).
func (c *adminClient) connect() error {
	if c.http != nil {
		return nil
	}
	cfg, err := coordinatorTLS(c.ca)
	if err != nil {
		return err
	}
	c.http = coordinator.HTTPClient(cfg, 30*time.Second)
	return nil
}

func newAdminCmd() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Manage organizations, plans, users, API and producer keys, and the coordinator cluster (the operator's API)",
		Long: "Calls the coordinator's admin API and prints its JSON answer. Exit status: 0 done, 1 refused\n" +
			"by the coordinator (the error's code and message on stderr), 2 usage or connection errors.\n" +
			"  certnode admin orgs create acme --name \"Acme Inc\"\n" +
			"  certnode admin keys create acme --scopes sign,verify --cidr 10.0.0.0/8   # prints the key once\n" +
			"  certnode admin keys revoke acme cnk_...\n\n" +
			"Required: $CERTNODE_ADMIN_TOKEN, or the file named by $CERTNODE_ADMIN_TOKEN_FILE.",
	}
	cmd.PersistentFlags().StringVar(&c.addr, "coordinator", "127.0.0.1:7101", "HTTP address of any coordinator node (https://host:port when it serves TLS)")
	bindEnv(cmd.PersistentFlags(), "coordinator", "CERTNODE_COORDINATOR")
	registerCoordinatorCA(cmd.PersistentFlags(), &c.ca)

	call := func(method, path string, body any) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error { return c.do(cmd, method, path, body) }
	}
	orgs := &cobra.Command{Use: "orgs", Short: "Organizations"}
	var name, plan string
	create := &cobra.Command{Use: "create ID", Short: "Create an organization", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"id": args[0], "name": name}
			if plan != "" {
				body["plan"] = plan
			}
			return c.do(cmd, "POST", "/v1/admin/orgs", body)
		}}
	create.Flags().StringVar(&name, "name", "", "display name (required)")
	bindEnv(create.Flags(), "name", "CERTNODE_ADMIN_ORG_NAME")
	create.Flags().StringVar(&plan, "plan", "", "plan (default "+coordinator.DefaultPlan+"; certnode admin plans list)")
	bindEnv(create.Flags(), "plan", "CERTNODE_ADMIN_ORG_PLAN")
	status := func(use, short, value string) *cobra.Command {
		return &cobra.Command{Use: use + " ID", Short: short, Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "PATCH", "/v1/admin/orgs/"+args[0], map[string]string{"status": value})
		}}
	}
	orgs.AddCommand(create,
		&cobra.Command{Use: "list", Short: "List organizations", Args: cobra.NoArgs, RunE: call("GET", "/v1/admin/orgs", nil)},
		&cobra.Command{Use: "get ID", Short: "Show an organization", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "GET", "/v1/admin/orgs/"+args[0]+"?consistent=true", nil)
		}},
		status("suspend", "Suspend an organization: its keys stop working everywhere", "suspended"),
		status("activate", "Reactivate a suspended organization", "active"))

	keys := &cobra.Command{Use: "keys", Short: "API keys"}
	var scopes, cidrs []string
	var keyName string
	var expires time.Duration
	kc := &cobra.Command{Use: "create ORG", Short: "Create an API key; it is printed once, then only its hash is kept", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{"name": keyName, "scopes": scopes}
			if len(cidrs) > 0 {
				body["cidrs"] = cidrs
			}
			if expires > 0 {
				body["expires_at"] = time.Now().UTC().Add(expires)
			}
			return c.do(cmd, "POST", "/v1/admin/orgs/"+args[0]+"/keys", body)
		}}
	kc.Flags().StringSliceVar(&scopes, "scopes", []string{"sign", "verify", "jobs", "read"}, "scopes: sign, verify, jobs, read, admin")
	bindEnv(kc.Flags(), "scopes", "CERTNODE_ADMIN_KEY_SCOPES")
	kc.Flags().StringSliceVar(&cidrs, "cidr", nil, "allow the key only from these networks (repeatable)")
	bindEnv(kc.Flags(), "cidr", "CERTNODE_ADMIN_KEY_CIDRS")
	kc.Flags().StringVar(&keyName, "name", "", "a name to recognise the key by")
	bindEnv(kc.Flags(), "name", "CERTNODE_ADMIN_KEY_NAME")
	kc.Flags().DurationVar(&expires, "expires", 0, "the key stops working after this long (default never)")
	bindEnv(kc.Flags(), "expires", "CERTNODE_ADMIN_KEY_EXPIRES")
	keys.AddCommand(kc,
		&cobra.Command{Use: "list ORG", Short: "List an organization's keys (never their secrets)", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "GET", "/v1/admin/orgs/"+args[0]+"/keys?consistent=true", nil)
		}},
		&cobra.Command{Use: "revoke ORG KEY_ID", Short: "Revoke a key", Args: cobra.ExactArgs(2), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "DELETE", "/v1/admin/orgs/"+args[0]+"/keys/"+args[1], nil)
		}})

	cluster := &cobra.Command{Use: "cluster", Short: "Show the coordinator cluster: leader, members, indexes", Args: cobra.NoArgs,
		RunE: call("GET", "/v1/admin/cluster", nil)}
	cmd.AddCommand(orgs, keys, cluster, c.plansCmd(), c.usersCmd(), c.membersCmd(), c.invitationsCmd(), c.producerKeysCmd(), c.auditCmd(), c.blocksCmd())
	orgs.AddCommand(c.orgSetCmd())
	eachCommand(cmd, func(sub *cobra.Command) { bindEnvAll(sub.Flags(), "ADMIN") })
	return cmd
}

// limitFlags are an organization's or a plan's limits on the command line.
type limitFlags struct{ l tenants.Limits }

func (f *limitFlags) register(fs *pflag.FlagSet) {
	fs.Float64Var(&f.l.RateLimit, "rate-limit", 0, "requests per second across the cluster (0: unlimited, or the plan's)")
	fs.IntVar(&f.l.Burst, "burst", 0, "requests admitted at once above the rate")
	fs.Int64Var(&f.l.MonthlyReceipts, "monthly-receipts", 0, "requests admitted per calendar month (UTC)")
	fs.IntVar(&f.l.MaxPayloadBytes, "max-payload-bytes", 0, "largest request body")
	fs.Int64Var(&f.l.MaxJobLines, "max-job-lines", 0, "most lines in one bulk job")
	fs.IntVar(&f.l.MaxConcurrentJobs, "max-concurrent-jobs", 0, "bulk jobs running at once")
}

func (c *adminClient) orgSetCmd() *cobra.Command {
	var plan string
	var lf limitFlags
	cmd := &cobra.Command{Use: "set ID", Short: "Change an organization's plan and limit overrides (a limit set here replaces the plan's)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if plan != "" {
				body["plan"] = plan
			}
			if lf.l != (tenants.Limits{}) {
				body["limits"] = lf.l
			}
			if len(body) == 0 {
				return usageErr("nothing to change: give --plan or a limit")
			}
			return c.do(cmd, "PATCH", "/v1/admin/orgs/"+args[0], body)
		}}
	cmd.Flags().StringVar(&plan, "plan", "", "plan id (certnode admin plans list)")
	lf.register(cmd.Flags())
	return cmd
}

func (c *adminClient) plansCmd() *cobra.Command {
	plans := &cobra.Command{Use: "plans", Short: "Plans: price, included receipts, price per 1,000 over, limits"}
	var p tenants.Plan
	var lf limitFlags
	put := &cobra.Command{Use: "put ID", Short: "Create or change a plan; organizations on it move to the new terms from now", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.ID, p.Limits = args[0], lf.l
			return c.do(cmd, "PUT", "/v1/admin/plans/"+args[0], p)
		}}
	put.Flags().StringVar(&p.Name, "name", "", "display name (required)")
	put.Flags().StringVar(&p.Currency, "currency", "USD", "ISO 4217 currency")
	put.Flags().Int64Var(&p.BasePrice, "base-price", 0, "price per month, in cents")
	put.Flags().Int64Var(&p.IncludedReceipts, "included-receipts", 0, "receipts included each month")
	put.Flags().Int64Var(&p.PricePer1000, "price-per-1000", 0, "price of each 1,000 receipts over the included ones, in cents")
	lf.register(put.Flags())
	plans.AddCommand(put, &cobra.Command{Use: "list", Short: "List plans", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
		return c.do(cmd, "GET", "/v1/admin/plans", nil)
	}})
	return plans
}

func (c *adminClient) usersCmd() *cobra.Command {
	users := &cobra.Command{Use: "users", Short: "Users who sign in to the dashboard"}
	var email, name string
	create := &cobra.Command{Use: "create", Short: "Create a user; the password comes from $CERTNODE_USER_PASSWORD (or _FILE)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pw, err := requiredSecret("CERTNODE_USER_PASSWORD")
			if err != nil {
				return usageErr("%v", err)
			}
			return c.do(cmd, "POST", "/v1/admin/users", map[string]string{"email": email, "name": name, "password": pw})
		}}
	create.Flags().StringVar(&email, "email", "", "the user's email (required)")
	create.Flags().StringVar(&name, "name", "", "the user's name")
	users.AddCommand(create,
		&cobra.Command{Use: "list", Short: "List users and their memberships", Args: cobra.NoArgs, RunE: func(cmd *cobra.Command, _ []string) error {
			return c.do(cmd, "GET", "/v1/admin/users", nil)
		}},
		&cobra.Command{Use: "reset-token USER_ID", Short: "Make a single-use password reset token (valid 1 h), printed once", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return c.do(cmd, "POST", "/v1/admin/users/"+args[0]+"/password-reset", nil)
			}})
	return users
}

func (c *adminClient) membersCmd() *cobra.Command {
	members := &cobra.Command{Use: "members", Short: "Who belongs to an organization, with which role"}
	var role string
	set := &cobra.Command{Use: "set ORG USER_ID", Short: "Give a user a role in an organization: " + strings.Join(coordinator.Roles, ", "), Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "PUT", "/v1/orgs/"+args[0]+"/members/"+args[1], map[string]string{"role": role})
		}}
	set.Flags().StringVar(&role, "role", coordinator.RoleViewer, "the role")
	members.AddCommand(set,
		&cobra.Command{Use: "list ORG", Short: "List members", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "GET", "/v1/orgs/"+args[0]+"/members", nil)
		}},
		&cobra.Command{Use: "remove ORG USER_ID", Short: "End a membership", Args: cobra.ExactArgs(2), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "DELETE", "/v1/orgs/"+args[0]+"/members/"+args[1], nil)
		}})
	return members
}

func (c *adminClient) invitationsCmd() *cobra.Command {
	inv := &cobra.Command{Use: "invitations", Short: "Invitations to join an organization (the token is printed once, valid 7 days)"}
	var email, role string
	create := &cobra.Command{Use: "create ORG", Short: "Invite someone by email with a role", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "POST", "/v1/orgs/"+args[0]+"/invitations", map[string]string{"email": email, "role": role})
		}}
	create.Flags().StringVar(&email, "email", "", "who is invited (required)")
	create.Flags().StringVar(&role, "role", coordinator.RoleViewer, "the role they will have")
	inv.AddCommand(create,
		&cobra.Command{Use: "list ORG", Short: "List invitations (never their tokens)", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "GET", "/v1/orgs/"+args[0]+"/invitations", nil)
		}},
		&cobra.Command{Use: "revoke ORG INVITATION_ID", Short: "Revoke an invitation", Args: cobra.ExactArgs(2), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "DELETE", "/v1/orgs/"+args[0]+"/invitations/"+args[1], nil)
		}})
	return inv
}

func (c *adminClient) producerKeysCmd() *cobra.Command {
	pk := &cobra.Command{Use: "producer-keys", Short: "Secrets an organization's own Kafka producers sign records with"}
	var overlap time.Duration
	rotate := &cobra.Command{Use: "rotate ORG KEY_ID", Short: "Make a successor key (printed once); the old one works for --overlap more", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "POST", "/v1/orgs/"+args[0]+"/producer-keys/"+args[1]+"/rotate", map[string]string{"overlap": overlap.String()})
		}}
	rotate.Flags().DurationVar(&overlap, "overlap", coordinator.DefaultRotationOverlap, "how long the old key keeps working")
	pk.AddCommand(rotate,
		&cobra.Command{Use: "create ORG", Short: "Create a producer key; its secret is printed once", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "POST", "/v1/orgs/"+args[0]+"/producer-keys", nil)
		}},
		&cobra.Command{Use: "list ORG", Short: "List producer keys (never their secrets)", Args: cobra.ExactArgs(1), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "GET", "/v1/orgs/"+args[0]+"/producer-keys?consistent=true", nil)
		}},
		&cobra.Command{Use: "revoke ORG KEY_ID", Short: "Revoke a producer key at once", Args: cobra.ExactArgs(2), RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "DELETE", "/v1/orgs/"+args[0]+"/producer-keys/"+args[1], nil)
		}})
	return pk
}

func (c *adminClient) auditCmd() *cobra.Command {
	var org string
	var after uint64
	var limit int
	cmd := &cobra.Command{Use: "audit", Short: "Audit events: who changed what, when, from where", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{"after": {strconv.FormatUint(after, 10)}, "limit": {strconv.Itoa(limit)}}
			if org != "" {
				q.Set("org", org)
			}
			return c.do(cmd, "GET", "/v1/admin/audit?"+q.Encode(), nil)
		}}
	cmd.Flags().StringVar(&org, "org", "", "only this organization's events")
	cmd.Flags().Uint64Var(&after, "after", 0, "events after this sequence number")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many events (1-1000)")
	return cmd
}

func (c *adminClient) blocksCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "blocks", Short: "Addresses kept out of ingest (after security alerts, or by hand)"}
	var forDur time.Duration
	var reason string
	add := &cobra.Command{Use: "add ADDR", Short: "Block an address at ingest for a while", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.do(cmd, "POST", "/v1/admin/blocks", map[string]any{"addr": args[0], "until": time.Now().Add(forDur).UTC(), "reason": reason})
		}}
	add.Flags().DurationVar(&forDur, "for", time.Hour, "how long (at most 30 days)")
	add.Flags().StringVar(&reason, "reason", "blocked by the operator", "why, for the record")
	cmd.AddCommand(
		&cobra.Command{Use: "list", Short: "The blocks in force", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error { return c.do(cmd, "GET", "/v1/admin/blocks", nil) }},
		&cobra.Command{Use: "lift ADDR", Short: "Lift an address's block", Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return c.do(cmd, "DELETE", "/v1/admin/blocks/"+url.PathEscape(args[0]), nil)
			}},
		add)
	return cmd
}

// Writes carry an Idempotency-Key, made once per command, and are retried
// with it while the cluster has no leader, so a retry after an answer lost
// with a dying leader never applies twice.
const adminRetryFor = 15 * time.Second

// do sends one admin request and prints the answer.
func (c *adminClient) do(cmd *cobra.Command, method, path string, body any) error {
	token, err := requiredSecret("CERTNODE_ADMIN_TOKEN")
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	if err := c.connect(); err != nil {
		return err
	}
	out, err := c.call(cmd.Context(), token, method, path, body)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(out)) > 0 {
		fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(string(out)))
	}
	return nil
}

// call sends one admin request with token and returns the answer's body;
// a refusal is an exitInvalid error with the coordinator's code and
// message, a failure to reach it an exitUsage one. A write carries an
// Idempotency-Key and is retried with it while the cluster has no leader.
func (c *adminClient) call(ctx context.Context, token, method, path string, body any) ([]byte, error) {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
	}
	idem := ""
	if method != "GET" {
		idem = rand.Text()
	}
	var resp *http.Response
	for deadline := time.Now().Add(adminRetryFor); ; {
		req, err := http.NewRequestWithContext(ctx, method, coordinator.BaseURL(c.addr)+path, bytes.NewReader(payload))
		if err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if idem != "" {
			req.Header.Set(coordinator.IdempotencyHeader, idem)
		}
		resp, err = c.http.Do(req)
		retry := (err != nil && idem != "") || (err == nil && resp.StatusCode == http.StatusServiceUnavailable)
		if !retry || time.Now().After(deadline) {
			if err != nil {
				return nil, &exitError{code: exitUsage, err: fmt.Errorf("coordinator %s: %w", c.addr, err)}
			}
			break
		}
		if resp != nil {
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return nil, &exitError{code: exitUsage, err: ctx.Err()}
		case <-time.After(500 * time.Millisecond):
		}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("coordinator %s: %w", c.addr, err)}
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(out, &e, json.RejectUnknownMembers(false)) != nil || e.Error.Code == "" {
			e.Error.Code, e.Error.Message = "http_"+fmt.Sprint(resp.StatusCode), strings.TrimSpace(string(out))
		}
		return nil, &exitError{code: exitInvalid, err: fmt.Errorf("%s: %s", e.Error.Code, e.Error.Message)}
	}
	return out, nil
}
