// Package archtest keeps the dependency direction of DESIGN.md section 3:
// cmd -> {ingest, pipeline, sinks, coordinator, signer} -> internal -> schemas.
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/certnode/certnode"

// layer returns the top-level area of a package in this module.
func layer(pkg string) string {
	rest := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
	top, _, _ := strings.Cut(rest, "/")
	return top
}

var tiers = map[string]bool{"ingest": true, "pipeline": true, "sinks": true, "coordinator": true, "signer": true}

// allowed reports whether a package in area from may import one in area to.
func allowed(from, to string) bool {
	switch {
	case from == to:
		return true
	case to == "cmd":
		return false // wiring only; nothing depends on it
	case from == "schemas":
		return false // the bottom layer
	case from == "internal":
		return to == "schemas"
	case tiers[from]:
		return to == "internal" || to == "schemas" // tiers never import each other
	case from == "cmd" || from == "bench":
		return true
	}
	return to == "internal" || to == "schemas"
}

func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "integration", "-f",
		`{{.ImportPath}}|{{join .Imports " "}}|{{join .TestImports " "}}|{{join .XTestImports " "}}`,
		module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		from := layer(parts[0])
		for i, imports := range parts[1:] {
			for _, imp := range strings.Fields(imports) {
				if !strings.HasPrefix(imp, module+"/") {
					continue
				}
				to := layer(imp)
				if !allowed(from, to) {
					kind := []string{"imports", "test imports", "external test imports"}[i]
					t.Errorf("%s %s %s: %s may not depend on %s", parts[0], kind, imp, from, to)
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no in-module imports found; is go list working?")
	}
}

func TestRulesCatchViolations(t *testing.T) {
	bad := [][2]string{{"pipeline", "ingest"}, {"signer", "pipeline"}, {"schemas", "internal"}, {"internal", "signer"}, {"sinks", "cmd"}, {"billing", "ingest"}, {"billing", "sinks"}}
	for _, b := range bad {
		if allowed(b[0], b[1]) {
			t.Errorf("%s -> %s should be refused", b[0], b[1])
		}
	}
	good := [][2]string{{"cmd", "signer"}, {"pipeline", "internal"}, {"internal", "schemas"}, {"signer", "schemas"}, {"billing", "internal"}, {"cmd", "billing"}}
	for _, g := range good {
		if !allowed(g[0], g[1]) {
			t.Errorf("%s -> %s should be allowed", g[0], g[1])
		}
	}
}
