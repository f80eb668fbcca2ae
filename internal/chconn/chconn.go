// Package chconn opens ClickHouse connections the same way for every tier.
package chconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/certnode/certnode/internal/envsecret"
	"github.com/certnode/certnode/internal/tlsconf"
)

// PasswordEnv names the variable holding the password; PasswordEnv_FILE
// names a file holding it instead. It is never a flag.
const PasswordEnv = "CERTNODE_CLICKHOUSE_PASSWORD"

// ErrAuth is a server's refusal of the user or its password.
var ErrAuth = errors.New("clickhouse refused the user or its password")

// Options are the connection settings, the same for every role.
type Options struct {
	// Addr is the native-protocol address(es), host:port.
	Addr []string
	// User signs in with Password (empty: ClickHouse's "default").
	User     string
	Password string
	// TLS connects over TLS 1.2 or later, checking the server's certificate
	// against CAFile's (PEM; empty: the system's roots).
	TLS    bool
	CAFile string
}

// LogValue keeps the password out of logs.
func (o Options) LogValue() slog.Value {
	return slog.GroupValue(slog.Any("addr", o.Addr), slog.String("user", o.User), slog.Bool("tls", o.TLS), slog.String("ca", o.CAFile))
}

// String and GoString keep the password out of fmt output too.
func (o Options) String() string {
	return fmt.Sprintf("{Addr:%v User:%s Password:<redacted> TLS:%t CAFile:%s}", o.Addr, o.User, o.TLS, o.CAFile)
}
func (o Options) GoString() string { return "chconn.Options" + o.String() }

// Validate reports every problem at once.
func (o Options) Validate() error {
	var errs []error
	if len(o.Addr) == 0 {
		errs = append(errs, errors.New("clickhouse: an address is required"))
	}
	for _, a := range o.Addr {
		if _, _, err := net.SplitHostPort(a); err != nil {
			errs = append(errs, fmt.Errorf("clickhouse: address %q must be host:port", a))
		}
	}
	if o.CAFile != "" && !o.TLS {
		errs = append(errs, errors.New("clickhouse: a CA file is for TLS: set TLS too"))
	}
	if o.Password != "" && !o.TLS && !loopback(o.Addr) {
		errs = append(errs, errors.New("clickhouse: a password is sent in the clear without TLS: set TLS to reach a server off this machine"))
	}
	return errors.Join(errs...)
}

// loopback reports whether every address is this machine's.
func loopback(addrs []string) bool {
	for _, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false
		}
	}
	return true
}

// PasswordFromEnv reads $CERTNODE_CLICKHOUSE_PASSWORD, or the file named by
// $CERTNODE_CLICKHOUSE_PASSWORD_FILE without its final line break; "" when
// neither is set.
func PasswordFromEnv() (string, error) {
	p, _, err := envsecret.Read(PasswordEnv)
	if err != nil {
		return "", fmt.Errorf("clickhouse: %w", err)
	}
	return strings.TrimRight(p, "\r\n"), nil
}

// Open connects over the native protocol and checks the server answers.
func Open(ctx context.Context, o Options) (driver.Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	opts := &ch.Options{Addr: o.Addr, Auth: ch.Auth{Username: o.User, Password: o.Password}, DialTimeout: 5 * time.Second}
	if o.TLS {
		cfg, err := tlsconf.Client(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse: %w", err)
		}
		opts.TLS = cfg
	}
	conn, err := ch.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: %w", err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		var ex *proto.Exception
		// 192 UNKNOWN_USER, 193 WRONG_PASSWORD, 194 REQUIRED_PASSWORD
		// (18.16); 516 AUTHENTICATION_FAILED (later releases, for each).
		if errors.As(err, &ex) && (ex.Code == 192 || ex.Code == 193 || ex.Code == 194 || ex.Code == 516) {
			user := o.User
			if user == "" {
				user = "default"
			}
			return nil, fmt.Errorf("clickhouse %v: %w (user %q; the password comes from $%s or $%s_FILE): %w", o.Addr, ErrAuth, user, PasswordEnv, PasswordEnv, err)
		}
		return nil, fmt.Errorf("clickhouse %v: %w", o.Addr, err)
	}
	return conn, nil
}

// Each runs a query and calls scan on each row; errors name what.
func Each(ctx context.Context, conn driver.Conn, what, sql string, args []any, scan func(driver.Rows) error) error {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("%s query: %w", what, err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return fmt.Errorf("%s query: %w", what, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%s query: %w", what, err)
	}
	return nil
}

// Placeholders is n bound parameters, "?, ?, ...", for an IN list.
func Placeholders(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }
