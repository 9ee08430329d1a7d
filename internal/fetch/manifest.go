package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// MaxManifestSize caps a signed manifest body. Real ones are a few KiB; the
// cap keeps a broken or hostile server from filling memory.
const MaxManifestSize = 4 << 20

// SignedManifest GETs {server}/api/v1/quantix-os/manifest/signed?channel=C
// and returns the body bytes unverified: the caller checks the signatures.
//
// The last body and ETag are cached per channel and revalidated with
// If-None-Match, so a 304 returns the cached bytes. A 404 gives an error
// wrapping ErrNotFound with the server's message; a body over
// MaxManifestSize gives ErrTooLarge. Network errors, 5xx and stalls are
// retried like downloads.
func (c *Client) SignedManifest(ctx context.Context, channel string) ([]byte, error) {
	what := fmt.Sprintf("signed manifest for channel %q", channel)
	if channel == "" {
		return nil, fmt.Errorf("fetch %s: empty channel", what)
	}
	u := *c.base
	u.Path += "manifest/signed"
	u.RawQuery = url.Values{"channel": {channel}}.Encode()
	target := u.String()

	var body []byte
	err := c.retry(ctx, what, func(ctx context.Context) (bool, error) {
		b, err := c.manifestAttempt(ctx, target, channel)
		body = b
		return false, err
	})
	if err != nil {
		return nil, err
	}
	return body, nil
}

func (c *Client) manifestAttempt(ctx context.Context, target, channel string) ([]byte, error) {
	actx, w, done := c.attempt(ctx)
	defer done()

	req, err := http.NewRequestWithContext(actx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	c.mu.Lock()
	cached, ok := c.cache[channel]
	c.mu.Unlock()
	if ok {
		req.Header.Set("If-None-Match", cached.etag)
	}

	resp, err := c.send(req, w)
	if err != nil {
		return nil, c.transportError(ctx, actx, err)
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotModified:
		if !ok {
			return nil, errors.New("server answered 304 Not Modified to a request without If-None-Match")
		}
		return bytes.Clone(cached.body), nil
	default:
		return nil, classify(resp)
	}

	if resp.ContentLength > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, resp.ContentLength, MaxManifestSize)
	}
	b, err := io.ReadAll(io.LimitReader(stallReader{resp.Body, w}, MaxManifestSize+1))
	if err != nil {
		return nil, c.transportError(ctx, actx, err)
	}
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, MaxManifestSize)
	}

	c.mu.Lock()
	if etag := resp.Header.Get("ETag"); etag != "" {
		c.cache[channel] = cachedManifest{etag: etag, body: bytes.Clone(b)}
	} else {
		delete(c.cache, channel)
	}
	c.mu.Unlock()
	return b, nil
}
