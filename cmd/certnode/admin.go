package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"
)

// adminClient calls a coordinator's admin API; any member answers (writes
// are forwarded to the leader).
type adminClient struct {
	addr string
	http *http.Client
}

func newAdminCmd() *cobra.Command {
	var c adminClient
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Manage organizations, API keys and the coordinator cluster (the operator's API)",
		Long: "Calls the coordinator's admin API and prints its JSON answer. Exit status: 0 done, 1 refused\n" +
			"by the coordinator (the error's code and message on stderr), 2 usage or connection errors.\n" +
			"  certnode admin orgs create acme --name \"Acme Inc\"\n" +
			"  certnode admin keys create acme --scopes sign,verify --cidr 10.0.0.0/8   # prints the key once\n" +
			"  certnode admin keys revoke acme cnk_...\n\n" +
			"Required: $CERTNODE_ADMIN_TOKEN, or the file named by $CERTNODE_ADMIN_TOKEN_FILE.",
	}
	cmd.PersistentFlags().StringVar(&c.addr, "coordinator", "127.0.0.1:7101", "HTTP address of any coordinator node")
	bindEnv(cmd.PersistentFlags(), "coordinator", "CERTNODE_COORDINATOR")
	c.http = &http.Client{Timeout: 30 * time.Second}

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
	create.Flags().StringVar(&plan, "plan", "", "plan (default free)")
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
	cmd.AddCommand(orgs, keys, cluster)
	return cmd
}

// do sends one admin request and prints the answer.
func (c *adminClient) do(cmd *cobra.Command, method, path string, body any) error {
	token, err := requiredSecret("CERTNODE_ADMIN_TOKEN")
	if err != nil {
		return &exitError{code: exitUsage, err: err}
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
// message, a failure to reach it an exitUsage one.
func (c *adminClient) call(ctx context.Context, token, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, &exitError{code: exitUsage, err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+c.addr+path, rd)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: err}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &exitError{code: exitUsage, err: fmt.Errorf("coordinator %s: %w", c.addr, err)}
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
