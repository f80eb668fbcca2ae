package main

import (
	"context"
	"time"

	"github.com/certnode/certnode/coordinator"
	"github.com/certnode/certnode/signer"
)

// Organizations' own signing keys: workers sign with them and make the
// ones the coordinator asks for; ingest publishes them.
const (
	// orgKeyPoll is how often workers look for key requests and open the
	// keys that sign or will.
	orgKeyPoll = time.Second
	// orgKeySpread spreads the workers' answers to one request, so that
	// usually one makes the key.
	orgKeySpread = 2 * time.Second
)

// workerOrgKeys sets a worker up to sign with organizations' keys listed in
// replica, open in its key ring directory or HSM, and to make them: in the
// HSM when one is configured, else as files beside ring.json (the ring's
// own notation, for development). It adds its loops to parts.
func workerOrgKeys(keys *keyFlags, ring *signer.Ring, replica *coordinator.Replica, parts map[string]func(context.Context) error) (*signer.OrgKeys, error) {
	ok, err := signer.NewOrgKeys(signer.OrgKeysConfig{Directory: replica, Service: ring, Dir: keys.keyring, HSM: keys.hsmOpener()})
	if err != nil {
		return nil, err
	}
	parts["orgkeys"] = func(ctx context.Context) error { return ok.Run(ctx, orgKeyPoll) }
	if keys.keyring != "" || keys.usePKCS11() {
		store := signer.OrgKeyStore{Dir: keys.keyring, HSM: keys.hsmOpener()}
		parts["orgkeys-maker"] = signer.NewOrgKeyMaker(replica, store, orgKeyPoll, orgKeySpread).Run
	}
	return ok, nil
}

// publishedOrgKeys publishes organizations' keys listed in replica beside
// the service's (ingest: no private key).
func publishedOrgKeys(ring *signer.Ring, replica *coordinator.Replica) (*signer.OrgKeys, error) {
	return signer.NewOrgKeys(signer.OrgKeysConfig{Directory: replica, Service: ring})
}
