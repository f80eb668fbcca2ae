package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/whsig"
	"github.com/certnode/certnode/schemas"
)

// apiFlags reach the CertNode API with an organization's API key.
type apiFlags struct {
	base, key, credFile string
}

const apiKeyEnv = "CERTNODE_API_KEY"

func (a *apiFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&a.base, "api", "http://127.0.0.1:8080", "the CertNode API's base URL")
	bindEnv(fs, "api", "CERTNODE_API_URL")
	fs.StringVar(&a.key, "api-key", "", "an API key of the organization (prefer $"+apiKeyEnv+"_FILE: a flag shows in process listings)")
	bindEnv(fs, "api-key", apiKeyEnv)
	fs.StringVar(&a.credFile, "credentials", "", "credentials.json written by certnode dev: its API address and key")
	bindEnv(fs, "credentials", "CERTNODE_CREDENTIALS_FILE")
}

// apiHelp says where the key comes from.
const apiHelp = "The API key: --api-key, $" + apiKeyEnv + ", the file named by $" + apiKeyEnv + "_FILE, or the key\n" +
	"of --credentials FILE (the file certnode dev writes, whose API address is then the default)."

// resolve finds the base URL and key, reporting every problem.
func (a *apiFlags) resolve(fs *pflag.FlagSet) (base, key string, problems []error) {
	base, key = a.base, a.key
	if key == "" {
		if v, ok, err := readSecretEnv(apiKeyEnv); err != nil {
			problems = append(problems, err)
		} else if ok {
			key = v
		}
	}
	if a.credFile != "" {
		c, err := readCredentials(a.credFile)
		switch {
		case err != nil:
			problems = append(problems, fmt.Errorf("--credentials: %v", err))
		default:
			if key == "" {
				key = c.APIKey
			}
			if !fs.Changed("api") && os.Getenv("CERTNODE_API_URL") == "" && c.HTTP != "" {
				base = c.HTTP
			}
		}
	}
	if key == "" {
		problems = append(problems, errors.New("no API key: --api-key, $"+apiKeyEnv+", $"+apiKeyEnv+"_FILE or --credentials FILE"))
	}
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, fmt.Errorf("--api %q: an http or https URL is required", base))
	}
	return strings.TrimSuffix(base, "/"), key, problems
}

// readSecretEnv reads $NAME or the file $NAME_FILE names, trimmed, if set.
func readSecretEnv(name string) (string, bool, error) {
	if os.Getenv(name) == "" && os.Getenv(name+"_FILE") == "" {
		return "", false, nil
	}
	v, err := requiredSecret(name)
	return v, err == nil, err
}

// apiErrorText reads an API error answer: "code: message".
func apiErrorText(status int, body []byte) string {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e, json.RejectUnknownMembers(false)) != nil || e.Error.Code == "" {
		return fmt.Sprintf("HTTP %d: %.200s", status, bytes.TrimSpace(body))
	}
	return e.Error.Code + ": " + e.Error.Message
}

// refused is an API answer that retrying would not change.
func refused(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusTooManyRequests && status != http.StatusRequestTimeout
}

func newWebhooksTriggerCmd() *cobra.Command {
	var api apiFlags
	var endpoint string
	cmd := &cobra.Command{
		Use:   "trigger EVENT_TYPE",
		Short: "Send an example event of a type to the organization's endpoints (and webhooks listen)",
		Long: "Asks the API to send the example event of EVENT_TYPE (from GET /v1/webhooks/event-types) as an\n" +
			"event of the key's organization: to every enabled endpoint subscribed to it, or only to --endpoint,\n" +
			"and to every `webhooks listen` session. Prints the event's id. Needs a key with the admin scope.\n" +
			"Types: " + strings.Join(schemas.EventTypes, ", ") + ".\n\n" + apiHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			base, key, problems := api.resolve(cmd.Flags())
			if !slices.Contains(schemas.EventTypes, args[0]) {
				problems = append(problems, fmt.Errorf("unknown event type %q; valid types: %s", args[0], strings.Join(schemas.EventTypes, ", ")))
			}
			if endpoint != "" && !strings.HasPrefix(endpoint, "ep_") {
				problems = append(problems, fmt.Errorf("--endpoint %q: an endpoint id (ep_...)", endpoint))
			}
			if len(problems) > 0 {
				return &exitError{code: exitUsage, err: errors.Join(problems...)}
			}
			body, _ := json.Marshal(struct {
				EventType  string `json:"event_type"`
				EndpointID string `json:"endpoint_id,omitempty"`
			}{args[0], endpoint})
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, "POST", base+"/v1/webhooks/trigger", bytes.NewReader(body))
			if err != nil {
				return usageErr("%v", err)
			}
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return usageErr("API %s: %v", base, err)
			}
			defer resp.Body.Close()
			out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			if resp.StatusCode != http.StatusAccepted {
				return &exitError{code: exitInvalid, err: errors.New(apiErrorText(resp.StatusCode, out))}
			}
			var ans struct {
				EventID string `json:"event_id"`
			}
			if err := json.Unmarshal(out, &ans, json.RejectUnknownMembers(false)); err != nil || ans.EventID == "" {
				return &exitError{code: exitInvalid, err: fmt.Errorf("unexpected answer: %.200s", out)}
			}
			fmt.Fprintln(cmd.OutOrStdout(), ans.EventID)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&endpoint, "endpoint", "", "send only to this endpoint of the organization (ep_...)")
	bindEnv(fs, "endpoint", "CERTNODE_WEBHOOK_ENDPOINT")
	api.register(fs)
	return cmd
}

// listenConfig is what `webhooks listen` runs with.
type listenConfig struct {
	base, key string
	forwardTo string
	events    []string
	// idle: a stream silent for this long (heartbeats come every 15 s) is
	// taken for dead and reopened; backoff bounds the wait between
	// attempts to connect.
	idle       time.Duration
	minBackoff time.Duration
	maxBackoff time.Duration
	forward    *http.Client
}

const (
	listenIdle       = 45 * time.Second
	forwardTimeout   = 15 * time.Second
	maxListenBackoff = 30 * time.Second
)

func newWebhooksListenCmd() *cobra.Command {
	var api apiFlags
	var forwardTo, events string
	cmd := &cobra.Command{
		Use:   "listen",
		Short: "Receive the organization's webhook events here and forward them to a local URL",
		Long: "Opens a long-lived stream of the key's organization's webhook events from the API (no public URL\n" +
			"needed) and forwards each one to --forward-to as a real delivery: a POST of the event's body with the\n" +
			"webhook-id, webhook-timestamp and webhook-signature headers, signed with the secret printed at\n" +
			"start (configure your receiver with it). Prints one line per event with the local answer. The\n" +
			"stream reopens with backoff when it drops, keeping the secret. Stops on SIGINT (exit 0).\n" +
			"Needs a key with the read scope.\n\n" + apiHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			base, key, problems := api.resolve(cmd.Flags())
			if u, err := url.Parse(forwardTo); forwardTo == "" {
				problems = append(problems, errors.New("--forward-to is required (for example http://localhost:3000/hook)"))
			} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				problems = append(problems, fmt.Errorf("--forward-to %q: an http or https URL is required", forwardTo))
			}
			var types []string
			if events != "" {
				for _, t := range strings.Split(events, ",") {
					t = strings.TrimSpace(t)
					if !slices.Contains(schemas.EventTypes, t) {
						problems = append(problems, fmt.Errorf("--events: unknown event type %q; valid types: %s", t, strings.Join(schemas.EventTypes, ", ")))
						continue
					}
					types = append(types, t)
				}
			}
			if len(problems) > 0 {
				return &exitError{code: exitUsage, err: errors.Join(problems...)}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg := listenConfig{base: base, key: key, forwardTo: forwardTo, events: types, idle: listenIdle,
				minBackoff: time.Second, maxBackoff: maxListenBackoff,
				// The target is the developer's own machine: no SSRF guard,
				// but no redirects either (a delivery never follows them).
				forward: &http.Client{Timeout: forwardTimeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
			return listenLoop(ctx, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&forwardTo, "forward-to", "", "the local URL that receives each event (required), such as http://localhost:3000/hook")
	bindEnv(fs, "forward-to", "CERTNODE_WEBHOOK_FORWARD_TO")
	fs.StringVar(&events, "events", "", "only these event types, comma-separated (default every type)")
	bindEnv(fs, "events", "CERTNODE_WEBHOOK_EVENTS")
	api.register(fs)
	return cmd
}

// listenLoop keeps a stream open until ctx ends (nil) or the API refuses
// the request (an exitInvalid error).
func listenLoop(ctx context.Context, cfg listenConfig, out, errOut io.Writer) error {
	var secret string
	backoff := cfg.minBackoff
	for {
		start := time.Now()
		s, err := listenOnce(ctx, cfg, secret, out)
		if s != "" {
			secret = s
		}
		if ctx.Err() != nil {
			return nil
		}
		var rerr *refusedError
		if errors.As(err, &rerr) {
			return &exitError{code: exitInvalid, err: fmt.Errorf("the API refused to stream events: %s", rerr.text)}
		}
		if time.Since(start) > time.Minute {
			backoff = cfg.minBackoff // it ran a while: a fresh drop
		}
		fmt.Fprintf(errOut, "certnode: events stream: %v; reconnecting in %s\n", err, backoff.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, cfg.maxBackoff)
	}
}

// refusedError is an answer that retrying would not change.
type refusedError struct{ text string }

func (e *refusedError) Error() string { return e.text }

// listenOnce streams until the stream ends, and returns the session's
// secret (once ready came) and why it ended.
func listenOnce(ctx context.Context, cfg listenConfig, secret string, out io.Writer) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	u := cfg.base + "/v1/webhooks/listen"
	if len(cfg.events) > 0 {
		u += "?events=" + url.QueryEscape(strings.Join(cfg.events, ","))
	}
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+cfg.key)
	req.Header.Set("Accept", "text/event-stream")
	if secret != "" {
		req.Header.Set(ingest.ListenSecretHeader, secret)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.ResponseHeaderTimeout = 30 * time.Second
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if refused(resp.StatusCode) {
			return "", &refusedError{apiErrorText(resp.StatusCode, b)}
		}
		return "", errors.New(apiErrorText(resp.StatusCode, b))
	}
	// A watchdog ends a stream that went silent, unless an event is being
	// forwarded (the stream is not read meanwhile).
	var last atomic.Int64
	var busy atomic.Bool
	last.Store(time.Now().UnixNano())
	stale := atomic.Bool{}
	go func() {
		t := time.NewTicker(min(cfg.idle/4, time.Second))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !busy.Load() && time.Since(time.Unix(0, last.Load())) > cfg.idle {
					stale.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	var event string
	var data []string
	got := ""
	for {
		line, err := r.ReadString('\n')
		last.Store(time.Now().UnixNano())
		if err != nil {
			if stale.Load() {
				err = fmt.Errorf("nothing came for %s", cfg.idle)
			} else if errors.Is(err, io.EOF) {
				err = errors.New("the server ended it")
			}
			return got, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			busy.Store(true)
			s, err := handleListenEvent(ctx, cfg, event, strings.Join(data, "\n"), secret, got, out)
			busy.Store(false)
			last.Store(time.Now().UnixNano())
			if err != nil {
				return got, err
			}
			if s != "" {
				got = s
			}
			event, data = "", nil
		case strings.HasPrefix(line, ":"): // a heartbeat
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(line[len("event:"):])
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(line[len("data:"):], " "))
		}
	}
}

// handleListenEvent acts on one SSE event; it returns the secret of a
// ready event.
func handleListenEvent(ctx context.Context, cfg listenConfig, event, data, prevSecret, got string, out io.Writer) (string, error) {
	switch event {
	case "ready":
		var r struct {
			Secret string `json:"secret"`
		}
		if err := json.Unmarshal([]byte(data), &r, json.RejectUnknownMembers(false)); err != nil || r.Secret == "" {
			return "", fmt.Errorf("a ready event without a secret: %.200s", data)
		}
		switch {
		case prevSecret == "":
			fmt.Fprintf(out, "Ready! Your webhook signing secret is %s (^C to quit)\n", r.Secret)
		case r.Secret != prevSecret:
			fmt.Fprintf(out, "Reconnected with a new webhook signing secret: %s\n", r.Secret)
		default:
			fmt.Fprintln(out, "Reconnected.")
		}
		return r.Secret, nil
	case "webhook":
		var w struct {
			ID        string `json:"id"`
			Timestamp int64  `json:"timestamp"`
			Signature string `json:"signature"`
			Type      string `json:"type"`
			Body      string `json:"body"`
		}
		if err := json.Unmarshal([]byte(data), &w, json.RejectUnknownMembers(false)); err != nil || w.ID == "" {
			fmt.Fprintf(out, "%s  (an event that could not be read: %v)\n", time.Now().Format(time.DateTime), err)
			return "", nil
		}
		fmt.Fprintf(out, "%s  %-28s %s  -> %s\n", time.Now().Format(time.DateTime), w.Type, w.ID, forward(ctx, cfg, w.ID, w.Timestamp, w.Signature, w.Body))
	case "dropped":
		var d struct {
			Dropped int64 `json:"dropped"`
		}
		json.Unmarshal([]byte(data), &d, json.RejectUnknownMembers(false))
		fmt.Fprintf(out, "%s  %d event(s) dropped: this listener fell behind (a slow --forward-to?)\n", time.Now().Format(time.DateTime), d.Dropped)
	}
	return "", nil
}

// forward delivers one event to the local URL and describes the answer.
func forward(ctx context.Context, cfg listenConfig, id string, ts int64, sig, body string) string {
	req, err := http.NewRequestWithContext(ctx, "POST", cfg.forwardTo, strings.NewReader(body))
	if err != nil {
		return "error: " + err.Error()
	}
	req.Header.Set(whsig.HeaderID, id)
	req.Header.Set(whsig.HeaderTimestamp, fmt.Sprint(ts))
	req.Header.Set(whsig.HeaderSignature, sig)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "certnode-webhooks-listen")
	start := time.Now()
	resp, err := cfg.forward.Do(req)
	took := time.Since(start).Milliseconds()
	if err != nil {
		return fmt.Sprintf("error: %v (%d ms)", err, took)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return fmt.Sprintf("%d %s (%d ms)", resp.StatusCode, http.StatusText(resp.StatusCode), took)
}
