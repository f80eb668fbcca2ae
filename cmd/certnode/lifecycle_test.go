package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunPartsSignals: the first SIGTERM asks every part to stop; a second
// one ends the process at once, whatever the parts are doing.
func TestRunPartsSignals(t *testing.T) {
	exited := make(chan int, 1)
	exit = func(code int) { exited <- code }
	defer func() { exit = os.Exit }()
	stopping, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	go runParts(context.Background(), map[string]func(context.Context) error{
		"stubborn": func(ctx context.Context) error {
			<-ctx.Done()
			close(stopping)
			<-release // never finishes stopping on its own
			return nil
		},
	})
	time.Sleep(100 * time.Millisecond) // signal.Notify is in place
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case <-stopping:
	case <-time.After(5 * time.Second):
		t.Fatal("the first SIGTERM did not ask the parts to stop")
	}
	select {
	case code := <-exited:
		t.Fatalf("exited (%d) after one signal, before the shutdown timeout", code)
	case <-time.After(200 * time.Millisecond):
	}
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-exited:
		if code == 0 {
			t.Fatal("the forced exit reported success")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a second SIGTERM did not end the process")
	}
}

// TestRunPartsTimeout: parts that ignore their context do not hold the
// caller past the shutdown timeout.
func TestRunPartsTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	defer close(release)
	done := make(chan error, 1)
	go func() {
		done <- runPartsWithin(ctx, 300*time.Millisecond, map[string]func(context.Context) error{
			"stubborn": func(context.Context) error { <-release; return nil },
		})
	}()
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "did not stop within") {
			t.Fatalf("runParts: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("runParts waited past the shutdown timeout")
	}
}

func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDir(dir); err == nil || !strings.Contains(err.Error(), "in use by another certnode (pid") {
		t.Fatalf("second lock: %v", err)
	}
	unlock()
	again, err := lockDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again()
	if _, err := os.Stat(filepath.Join(dir, ".lock")); err != nil {
		t.Fatal(err)
	}
}
