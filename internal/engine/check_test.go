package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/subjects"
)

// countingFetcher counts calls to the Update Server.
type countingFetcher struct {
	Fetcher
	manifests atomic.Int32
}

func (c *countingFetcher) SignedManifest(ctx context.Context, channel string) ([]byte, error) {
	c.manifests.Add(1)
	return c.Fetcher.SignedManifest(ctx, channel)
}

func (c *countingFetcher) Download(ctx context.Context, artifact, dst string, size int64, sha string, p fetch.Progress) error {
	return c.Fetcher.Download(ctx, artifact, dst, size, sha, p)
}

// A fleet check carrying the signed manifest is answered without asking the Update Server.
func TestCheckWithSignedManifest(t *testing.T) {
	var cf *countingFetcher
	h := newHarness(t, func(o *Options) {
		cf = &countingFetcher{Fetcher: o.Fetcher}
		o.Fetcher = cf
	})
	signed, err := os.ReadFile(filepath.Join(h.repo, "channels/dev/manifest.signed.json"))
	if err != nil {
		t.Fatal(err)
	}
	reply, err := h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: signed})
	if err != nil || !reply.Available || reply.AvailableVersion != "0.0.6" {
		t.Fatalf("check = %+v, %v", reply, err)
	}
	if n := cf.manifests.Load(); n != 0 {
		t.Fatalf("Update Server asked %d times", n)
	}
	// A tampered envelope is refused, naming the cause.
	bad := append([]byte(nil), signed...)
	bad[len(bad)/2] ^= 1
	reply, err = h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: bad})
	if err == nil || reply.Error == "" {
		t.Fatalf("tampered manifest accepted: %+v", reply)
	}
	// Without it, the server is asked.
	if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{}); err != nil || cf.manifests.Load() != 1 {
		t.Fatalf("plain check: %v, %d calls", err, cf.manifests.Load())
	}
}

func TestCheckRefusesLowerSerialAfterSeeingHigher(t *testing.T) {
	h := newHarness(t)
	old, err := os.ReadFile(filepath.Join(h.repo, "channels/dev/manifest.signed.json"))
	if err != nil {
		t.Fatal(err)
	}
	h.release("0.0.7", time.Now())
	if _, err := h.eng.Check(context.Background(), subjects.CheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// A replayed older manifest (serial 1 after serial 2) is refused.
	_, err = h.eng.Check(context.Background(), subjects.CheckRequest{SignedManifest: old})
	if !errors.Is(err, manifest.ErrSerialRollback) {
		t.Fatalf("replayed manifest: %v, want ErrSerialRollback", err)
	}
}
