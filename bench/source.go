package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DefaultSources are directories of real files on a Linux build host: the Go
// toolchain first (the example), then system libraries and programs.
func DefaultSources() []string {
	return []string{GoRoot(), "/usr/lib", "/usr/share", "/usr/bin", "/usr/libexec"}
}

// GoRoot is the Go toolchain's tree, as `go env GOROOT` says, or
// /usr/local/go when there is no go command.
func GoRoot() string {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if root := strings.TrimSpace(string(out)); err == nil && root != "" {
		return root
	}
	return "/usr/local/go"
}

// MemTotal is the machine's memory as /proc/meminfo says, e.g. "23.5 GiB".
func MemTotal() string {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	return "unknown"
}

// errEnough ends a walk once enough bytes were gathered.
var errEnough = errors.New("enough")

// walkFiles calls fn for every regular file under the sources, in lexical
// order, until fn returns errEnough (which ends the walk without an error) or
// another error. rel is the file's path below its source, prefixed with the
// source's index. Unreadable directories and missing sources are skipped.
func walkFiles(sources []string, fn func(path, rel string, fi fs.FileInfo) error) error {
	for i, src := range sources {
		if src == "" {
			continue
		}
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if d != nil && d.IsDir() && p != src {
					return fs.SkipDir // unreadable directory
				}
				return nil
			}
			if !d.Type().IsRegular() {
				return nil
			}
			fi, err := d.Info()
			if err != nil || fi.Size() == 0 {
				return nil
			}
			rel, err := filepath.Rel(src, p)
			if err != nil {
				return nil
			}
			return fn(p, filepath.Join(fmt.Sprintf("%d-%s", i, filepath.Base(src)), rel), fi)
		})
		if errors.Is(err, errEnough) {
			return nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// fillTree adds real files from sources into dir, ones it does not hold yet,
// until they add up to at least rawSize bytes, and returns the bytes added.
// Files are hard-linked where possible (nothing is copied: the tree is only
// read, by the packer) and copied otherwise.
func fillTree(dir string, sources []string, rawSize int64) (int64, error) {
	var added int64
	err := walkFiles(sources, func(p, rel string, fi fs.FileInfo) error {
		if added >= rawSize {
			return errEnough
		}
		dst := filepath.Join(dir, rel)
		if _, err := os.Lstat(dst); err == nil {
			return nil // added by an earlier call
		}
		f, err := os.Open(p) // skip what we may not read
		if err != nil {
			return nil
		}
		f.Close()
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Link(p, dst); err != nil {
			if err := copyFile(p, dst, 0o644); err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
		}
		added += fi.Size()
		return nil
	})
	if err == nil && added < rawSize {
		return added, fmt.Errorf("the sources %s hold only %d MB of readable files, want %d MB more",
			strings.Join(sources, ", "), added/1e6, rawSize/1e6)
	}
	return added, err
}

// writeImage writes a raw disk image of size bytes to path that compresses
// like a root filesystem: the contents of real files, each starting on a
// 4 KiB block, fill the first 60%; the rest is free space (zeros).
func writeImage(path string, sources []string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	used := size * 6 / 10
	var off int64
	buf := make([]byte, 1<<20)
	err = walkFiles(sources, func(p, _ string, fi fs.FileInfo) error {
		if off >= used {
			return errEnough
		}
		in, err := os.Open(p)
		if err != nil {
			return nil
		}
		defer in.Close()
		n, err := io.CopyBuffer(io.NewOffsetWriter(f, off), io.LimitReader(in, used-off), buf)
		if err != nil {
			return fmt.Errorf("image from %s: %w", p, err)
		}
		off += (n + 4095) &^ 4095
		return nil
	})
	if err != nil {
		return err
	}
	if off < used {
		return fmt.Errorf("the sources %s hold only %d MB of readable files, want %d MB",
			strings.Join(sources, ", "), off/1e6, used/1e6)
	}
	// The free space: a truncate leaves a hole, which reads as zeros.
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Close()
}
