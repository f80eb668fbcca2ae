package main

import (
	"runtime"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// builtinFlag is a flag cobra adds itself; it has no variable.
func builtinFlag(f *pflag.Flag) bool { return f.Name == "help" || f.Name == "version" }

// Help shows a placeholder per flag: pflag takes it from a backquoted phrase
// in the usage, so "from `certnode jwks`" would render as "--jwks certnode jwks".
func TestCLIFlagPlaceholders(t *testing.T) {
	root := newRoot()
	eachCommand(root, func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		c.Flags().VisitAll(func(f *pflag.Flag) {
			name, _ := pflag.UnquoteUsage(f)
			if strings.Contains(f.Usage, "`") || strings.ContainsAny(name, " \t") {
				t.Errorf("%s --%s: usage %q renders the placeholder %q", c.CommandPath(), f.Name, f.Usage, name)
			}
		})
	})
}

// Every flag can be set from a CERTNODE_* variable, which --help shows, and
// a variable means the same flag wherever it is used.
func TestCLIEveryFlagHasEnv(t *testing.T) {
	root := newRoot()
	flagOfEnv := map[string]string{}
	flags := 0
	eachCommand(root, func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if builtinFlag(f) {
				return
			}
			flags++
			env := f.Annotations[envAnnotation]
			if len(env) != 1 || !strings.HasPrefix(env[0], "CERTNODE_") {
				t.Errorf("%s --%s has no CERTNODE_* variable", c.CommandPath(), f.Name)
				return
			}
			if !strings.Contains(f.Usage, "[$"+env[0]+"]") {
				t.Errorf("%s --%s: usage %q does not name $%s", c.CommandPath(), f.Name, f.Usage, env[0])
			}
			if prev, ok := flagOfEnv[env[0]]; ok && prev != f.Name {
				t.Errorf("$%s sets --%s and --%s", env[0], prev, f.Name)
			}
			flagOfEnv[env[0]] = f.Name
		})
	})
	if flags < 40 {
		t.Fatalf("walked only %d flags: the walk misses commands", flags)
	}
}

// Secrets never come from flags, so help is the only place that names them.
func TestCLIHelpNamesSecrets(t *testing.T) {
	setup(t)
	pin := []string{"$CERTNODE_PKCS11_PIN,", "$CERTNODE_PKCS11_PIN_FILE"}
	internal := []string{"$CERTNODE_INTERNAL_SECRET,", "$CERTNODE_INTERNAL_SECRET_FILE"}
	checked := map[string]bool{}
	eachCommand(newRoot(), func(c *cobra.Command) {
		var want []string
		if c.Flags().Lookup("pkcs11-module") != nil {
			want = append(want, pin...)
		}
		if c.Flags().Lookup("clickhouse-user") != nil {
			want = append(want, "$CERTNODE_CLICKHOUSE_PASSWORD", "$CERTNODE_CLICKHOUSE_PASSWORD_FILE")
		}
		if c.Name() == "ingest" || c.Name() == "worker" {
			want = append(want, internal...)
			want = append(want, "$CERTNODE_NODE_TOKEN", "$CERTNODE_NODE_TOKEN_FILE")
		}
		if c.Name() == "grant" {
			want = append(want, "$CERTNODE_KAFKA_GRANT_PASSWORD", "$CERTNODE_KAFKA_GRANT_PASSWORD_FILE", "$CERTNODE_KAFKA_SASL_PASSWORD")
		}
		if c.Name() == "coordinator" {
			want = append(want, "$CERTNODE_ADMIN_TOKEN", "$CERTNODE_NODE_TOKEN", "$CERTNODE_ADMIN_TOKEN_FILE", "$CERTNODE_NODE_TOKEN_FILE")
		}
		if len(want) == 0 {
			return
		}
		args := append(strings.Fields(c.CommandPath())[1:], "--help")
		r := certnode(t, "", args...)
		if r.code != 0 {
			t.Fatalf("%s: %+v", strings.Join(args, " "), r)
		}
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("certnode %s lacks %s:\n%s", strings.Join(args, " "), w, r.stdout)
			}
		}
		checked[c.Name()] = true
	})
	for _, name := range []string{"ingest", "worker", "coordinator", "dev", "sign", "jwks", "generate", "rotate", "list", "clickhouse", "processing", "evidence", "analytics", "grant"} {
		if !checked[name] {
			t.Errorf("help of %s not checked", name)
		}
	}
}

func TestCLIVersion(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3-4-gabcdef0-dirty", "abcdef0123456789"
	r := certnode(t, "", "version")
	want := "certnode v1.2.3-4-gabcdef0-dirty\ncommit abcdef0123456789\n" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("certnode version: %+v\nwant %q", r, want)
	}
	if f := certnode(t, "", "--version"); f.code != 0 || f.stdout != want {
		t.Fatalf("certnode --version: %+v", f)
	}
	// Unstamped builds still say what they are.
	version, commit = "", ""
	if r := certnode(t, "", "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "certnode ") || !strings.Contains(r.stdout, "\ncommit ") ||
		strings.Contains(r.stdout, "certnode \n") || strings.Contains(r.stdout, "commit \n") {
		t.Fatalf("unstamped version: %+v", r)
	}
}
