package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
)

// shutdownTimeout bounds a graceful stop of any role (--shutdown-timeout).
var shutdownTimeout = 10 * time.Second

// exit ends the process when a stop must not wait (tests replace it).
var exit = os.Exit

// drainTimeout is how long a stopping part (a worker's batch, ingest's
// open requests) may take: most of the shutdown timeout, leaving time to
// leave the group and close clients before runParts gives up.
func drainTimeout() time.Duration { return shutdownTimeout * 3 / 4 }

// runParts runs long-lived parts until ctx ends, a signal arrives or one
// part fails. Stopping is bounded: parts get shutdownTimeout to return; a
// second signal, or a stop that outlives the timeout by a few seconds
// (closing clients included), ends the process at once.
func runParts(ctx context.Context, parts map[string]func(context.Context) error) error {
	return runPartsWithin(ctx, shutdownTimeout, parts)
}

func runPartsWithin(ctx context.Context, shutdownTimeout time.Duration, parts map[string]func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case sig := <-sigs:
			slog.Info("stopping", "signal", sig.String(), "timeout", shutdownTimeout)
			cancel()
		case <-ctx.Done():
			return
		}
		watchdog := time.NewTimer(shutdownTimeout + 5*time.Second)
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "certnode: %s again: exiting now\n", sig)
		case <-watchdog.C:
			fmt.Fprintf(os.Stderr, "certnode: did not stop within %s: exiting now\n", shutdownTimeout)
		}
		exit(exitInvalid)
	}()
	g, gctx := errgroup.WithContext(ctx)
	done := make(chan struct{})
	for name, run := range parts {
		g.Go(func() error {
			if err := run(gctx); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	var err error
	go func() { err = g.Wait(); close(done) }()
	select {
	case <-done:
		return err
	case <-gctx.Done():
	}
	select {
	case <-done:
		return err
	case <-time.After(shutdownTimeout):
		return fmt.Errorf("did not stop within %s", shutdownTimeout)
	}
}

// lockDir takes an exclusive lock on dir (a lock file inside it) for the
// life of the process, so two processes never share one data folder.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		holder := strings.TrimSpace(string(b[:n]))
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another certnode (pid %s); stop it first, or use another --data folder", dir, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}
