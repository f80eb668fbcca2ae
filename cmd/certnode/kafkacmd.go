package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/certnode/certnode/internal/envsecret"
	"github.com/certnode/certnode/internal/kafka"
)

// grantPasswordEnv holds the password certnode kafka grant gives the
// role's user (or names its file, with _FILE).
const grantPasswordEnv = "CERTNODE_KAFKA_GRANT_PASSWORD"

func newKafkaCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "kafka", Short: "Administer the brokers for the roles: their users and ACLs"}
	cmd.AddCommand(newKafkaGrantCmd())
	return cmd
}

func newKafkaGrantCmd() *cobra.Command {
	var kf kafkaFlags
	var role, user, mechanism string
	roles := make([]string, 0, len(kafka.Roles()))
	for _, r := range kafka.Roles() {
		roles = append(roles, string(r))
	}
	cmd := &cobra.Command{
		Use:   "grant",
		Short: "Give a role's Kafka user the topics and consumer groups that role uses, and nothing more",
		Long: "Connects as an administrator (the usual --kafka flags: --kafka-tls, --kafka-ca, --kafka-sasl-mechanism,\n" +
			"--kafka-sasl-user, its password from $CERTNODE_KAFKA_SASL_PASSWORD or its _FILE), creates the topics\n" +
			"under --topic-prefix that do not exist yet (the roles' users may not), and allows --user to read, write\n" +
			"and join the groups of --role (" + strings.Join(roles, ", ") + "), with Describe on\n" +
			"every topic of the prefix. With $" + grantPasswordEnv + " (or $" + grantPasswordEnv + "_FILE) it also\n" +
			"creates the user's SCRAM credential, or replaces it; without, the user's credential is left as it is.\n" +
			"Run it again after an upgrade: ACLs already there are kept, new ones added.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kcfg := kf.config()
			var errs []string
			if err := kcfg.Validate(); err != nil {
				errs = append(errs, err.Error())
			}
			if _, err := kafka.GrantFor(kafka.Role(role), kf.prefix); err != nil {
				errs = append(errs, err.Error())
			}
			if user == "" {
				errs = append(errs, "--user is required: the Kafka user the role runs as")
			}
			password, _, err := envsecret.Read(grantPasswordEnv)
			if err != nil {
				errs = append(errs, err.Error())
			}
			if len(errs) > 0 {
				return usageErr("%s", strings.Join(errs, "; "))
			}
			if err := ensureTopics(cmd.Context(), kcfg); err != nil {
				return err
			}
			cl, err := kafka.NewClient(kcfg)
			if err != nil {
				return usageErr("%v", err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			done, err := kafka.ApplyGrant(ctx, kadm.NewClient(cl), kafka.Role(role), kf.prefix,
				kafka.SCRAMUser{Name: user, Mechanism: mechanism, Password: strings.TrimRight(password, "\r\n")})
			if err != nil {
				return runErr(err)
			}
			out := cmd.OutOrStdout()
			for _, acl := range done.ACLs {
				fmt.Fprintln(out, acl)
			}
			if done.PasswordSet {
				fmt.Fprintf(out, "%s credential of %s set\n", mechanism, user)
			} else {
				fmt.Fprintf(out, "credential of %s left as it was (no $%s)\n", user, grantPasswordEnv)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&role, "role", "", "the role: "+strings.Join(roles, ", "))
	bindEnv(fs, "role", "CERTNODE_KAFKA_GRANT_ROLE")
	fs.StringVar(&user, "user", "", "the role's Kafka user (its --kafka-sasl-user)")
	bindEnv(fs, "user", "CERTNODE_KAFKA_GRANT_USER")
	fs.StringVar(&mechanism, "user-mechanism", "SCRAM-SHA-512", "the SCRAM mechanism of the user's credential: SCRAM-SHA-256 or SCRAM-SHA-512")
	bindEnv(fs, "user-mechanism", "CERTNODE_KAFKA_GRANT_MECHANISM")
	kf.register(fs, true)
	return cmd
}
