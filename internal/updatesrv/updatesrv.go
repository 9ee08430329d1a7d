// Package updatesrv is the Update Server of DESIGN.md section 4, serving a
// release repository written by package release:
//
//	GET /api/v1/quantix-os/manifest?channel=C          the channel's manifest.json
//	GET /api/v1/quantix-os/manifest/signed?channel=C   its signed envelope
//	GET /api/v1/quantix-os/releases/{version}/{file}   an artifact
//
// Every answer carries a strong ETag, so If-None-Match gives 304 and an
// interrupted download resumes with Range and If-Range. Errors are
// {"error": {"code", "message"}}. Files are opened through os.Root, so no
// request reaches outside the repository, symlinks included.
package updatesrv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/quantix-os/update-agent/internal/manifest"
	"github.com/quantix-os/update-agent/internal/semver"
)

// Prefix is where the API lives; artifact paths in manifests are relative to it.
const Prefix = "/api/v1/quantix-os/"

// Handler serves the repository at repo. The repository may be empty or even
// missing when the server starts: every request opens what it needs, so
// releases made while it runs are served at once. logger may be nil.
func Handler(repo string, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &server{repo: repo, log: logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Prefix+"manifest", s.manifest("manifest.json"))
	mux.HandleFunc("GET "+Prefix+"manifest/signed", s.manifest("manifest.signed.json"))
	mux.HandleFunc("GET "+Prefix+"releases/{version}/{file}", s.artifact)
	mux.HandleFunc("/", s.notFound)
	return mux
}

type server struct {
	repo string
	log  *slog.Logger
}

// manifest serves one of a channel's two files, read whole (they are small)
// so the ETag is a hash of exactly the bytes sent.
func (s *server) manifest(file string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		channel := q.Get("channel")
		switch {
		case !q.Has("channel"):
			writeError(w, http.StatusBadRequest, "bad_request", "missing channel parameter")
			return
		case manifest.ValidChannel(channel) != nil:
			writeError(w, http.StatusBadRequest, "invalid_channel",
				fmt.Sprintf("channel %q: want 1 to 32 of a-z 0-9 . _ -", clip(channel)))
			return
		}
		body, mtime, err := s.read("channels/" + channel + "/" + file)
		if errors.Is(err, fs.ErrNotExist) {
			writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("channel %q has no release", channel))
			return
		}
		if err != nil {
			s.log.Error("read manifest", "channel", channel, "file", file, "err", err)
			writeError(w, http.StatusInternalServerError, "internal", "cannot read the manifest")
			return
		}
		sum := sha256.Sum256(body)
		h := w.Header()
		h.Set("ETag", `"`+hex.EncodeToString(sum[:16])+`"`)
		h.Set("Content-Type", "application/json")
		// Clients may keep it but must revalidate: a new release replaces it.
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", mtime, bytes.NewReader(body))
	}
}

// read reads a small file of the repository through os.Root.
func (s *server) read(name string) ([]byte, time.Time, error) {
	root, err := os.OpenRoot(s.repo)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, time.Time{}, fmt.Errorf("%s is not a regular file: %w", name, fs.ErrNotExist)
	}
	const limit = 2 * manifest.MaxSize
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(b) > limit {
		return nil, time.Time{}, fmt.Errorf("%s is over %d bytes", name, limit)
	}
	return b, fi.ModTime(), nil
}

// artifact serves releases/{version}/{file} with Range support. Its ETag is
// size and mtime: hashing a disk image per request would cost too much, and
// package release writes every artifact by rename, so new bytes mean a new
// mtime.
func (s *server) artifact(w http.ResponseWriter, r *http.Request) {
	version, file := r.PathValue("version"), r.PathValue("file")
	if err := semver.Valid(version); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("version %q is not a semantic version", clip(version)))
		return
	}
	// One plain segment, never a dot file: temp files of a release in
	// progress start with a dot.
	if err := manifest.ValidArtifactPath(file); err != nil || strings.Contains(file, "/") || strings.HasPrefix(file, ".") {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("file name %q is not allowed", clip(file)))
		return
	}
	name := version + "/" + file
	notFound := func() {
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("release file %q not found", name))
	}
	root, err := os.OpenRoot(filepath.Join(s.repo, "releases"))
	if errors.Is(err, fs.ErrNotExist) {
		notFound()
		return
	}
	if err != nil {
		s.log.Error("open releases", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "cannot open the release repository")
		return
	}
	defer root.Close()
	f, err := root.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		notFound()
		return
	}
	if err != nil {
		// os.Root refuses a symlink out of the repository with an error of
		// its own; to a client that file just does not exist.
		s.log.Warn("open artifact", "file", name, "err", err)
		notFound()
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.log.Error("stat artifact", "file", name, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "cannot read the file")
		return
	}
	if !fi.Mode().IsRegular() {
		notFound()
		return
	}
	s.log.Debug("serve artifact", "file", name, "range", r.Header.Get("Range"), "remote", r.RemoteAddr)
	h := w.Header()
	h.Set("ETag", `"`+strconv.FormatInt(fi.Size(), 16)+"-"+strconv.FormatInt(fi.ModTime().UnixNano(), 16)+`"`)
	h.Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, file, fi.ModTime(), f)
}

// notFound answers every other path, and other methods on ours.
func (s *server) notFound(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && isOurs(r.URL.Path) {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("method %s is not allowed", r.Method))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no such endpoint: %s", clip(r.URL.Path)))
}

func isOurs(p string) bool {
	return p == Prefix+"manifest" || p == Prefix+"manifest/signed" || strings.HasPrefix(p, Prefix+"releases/")
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(b)
}

// clip keeps request-supplied strings short in answers.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
