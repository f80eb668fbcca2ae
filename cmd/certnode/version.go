package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and commit are stamped by the build (make build does):
//
//	go build -ldflags "-X main.version=$(git describe --always --dirty) -X main.commit=$(git rev-parse HEAD)"
//
// The commit is also taken from the toolchain's VCS stamp, which is missing
// from builds in a git worktree or with -buildvcs=false; the version falls
// back to the module version go install records.
var version, commit string

// versionText is what certnode version and certnode --version print: the
// version, the commit it was built from and the Go toolchain.
func versionText() string {
	v, rev := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && rev != "" {
			rev += " (modified)"
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("certnode %s\ncommit %s\n%s %s/%s\n", v, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), versionText())
			return err
		},
	}
}
