// Command ociimage packs directories into an OCI image archive (an image layout in a tar)
// that `ctr images import` loads into containerd, so the real node runs the project's
// images without a registry or a Docker engine.
//
// Each DIR becomes one uncompressed layer, in the order given (the first is the base).
// The image is for the machine's own architecture (it packs this machine's binaries).
// The layers are reproducible: entries sorted, times zeroed, owned by root, modes kept.
// The image config takes its user, entrypoint, environment, working directory and
// exposed ports from flags or from a config.json written by e2e/images (imagebuild).
//
// Usage: ociimage -name REF -out FILE.tar [-imagebuild-config FILE] [-user U]
//
//	[-entrypoint JSON-ARRAY] [-env K=V]... DIR...
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// imagebuildConfig is the part of e2e/images' config.json an image config needs.
type imagebuildConfig struct {
	User         string   `json:"user"`
	ExposedPorts []string `json:"exposedPorts"`
	Entrypoint   []string `json:"entrypoint"`
	Env          []string `json:"env"`
	WorkingDir   string   `json:"workingDir"`
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	name := flag.String("name", "", "image reference, e.g. docker.io/chatcluster/chat-server:e2e")
	out := flag.String("out", "", "archive to write")
	fromBuild := flag.String("imagebuild-config", "", "config.json from e2e/images/build.sh")
	user := flag.String("user", "", "user the container runs as (overrides the imagebuild config)")
	entrypoint := flag.String("entrypoint", "", "entrypoint as a JSON array (overrides the imagebuild config)")
	var env listFlag
	flag.Var(&env, "env", "K=V added to the image's environment (repeatable)")
	flag.Parse()
	if *name == "" || *out == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: ociimage -name REF -out FILE.tar [-imagebuild-config FILE] [-user U] [-entrypoint JSON] [-env K=V]... DIR...")
		os.Exit(2)
	}
	cfg := imagebuildConfig{WorkingDir: "/"}
	if *fromBuild != "" {
		raw, err := os.ReadFile(*fromBuild)
		if err != nil {
			fail(err)
		}
		if err := json.Unmarshal(raw, &cfg); err != nil {
			fail(fmt.Errorf("%s: %w", *fromBuild, err))
		}
	}
	if *user != "" {
		cfg.User = *user
	}
	if *entrypoint != "" {
		cfg.Entrypoint = nil
		if err := json.Unmarshal([]byte(*entrypoint), &cfg.Entrypoint); err != nil {
			fail(fmt.Errorf("-entrypoint must be a JSON array of strings: %w", err))
		}
	}
	cfg.Env = append(cfg.Env, env...)
	if len(cfg.Entrypoint) == 0 {
		fail(errors.New("the image needs an entrypoint (-entrypoint or -imagebuild-config)"))
	}
	if err := writeArchive(*out, *name, cfg, flag.Args()); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ociimage:", err)
	os.Exit(1)
}

// blob is one content-addressed file of the image layout.
type blob struct {
	digest string
	data   []byte
}

func newBlob(data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{digest: "sha256:" + hex.EncodeToString(sum[:]), data: data}
}

func writeArchive(out, name string, cfg imagebuildConfig, dirs []string) error {
	var blobs []blob
	var layers []descriptor
	var diffIDs []string
	for _, dir := range dirs {
		layer, err := tarDirectory(dir)
		if err != nil {
			return fmt.Errorf("layer %s: %w", dir, err)
		}
		b := newBlob(layer)
		blobs = append(blobs, b)
		// Uncompressed layers: the digest of the blob is also its diff ID.
		diffIDs = append(diffIDs, b.digest)
		layers = append(layers, descriptor{
			MediaType: "application/vnd.oci.image.layer.v1.tar",
			Digest:    b.digest,
			Size:      int64(len(layer)),
		})
	}
	exposed := map[string]struct{}{}
	for _, p := range cfg.ExposedPorts {
		if !strings.Contains(p, "/") {
			p += "/tcp"
		}
		exposed[p] = struct{}{}
	}
	env := append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, cfg.Env...)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC().Format(time.RFC3339),
		"config": map[string]any{
			"User":         cfg.User,
			"Entrypoint":   cfg.Entrypoint,
			"Env":          env,
			"WorkingDir":   cfg.WorkingDir,
			"ExposedPorts": exposed,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	if err != nil {
		return err
	}
	configBlob := newBlob(config)
	blobs = append(blobs, configBlob)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config": descriptor{
			MediaType: "application/vnd.oci.image.config.v1+json",
			Digest:    configBlob.digest,
			Size:      int64(len(config)),
		},
		"layers": layers,
	})
	if err != nil {
		return err
	}
	manifestBlob := newBlob(manifest)
	blobs = append(blobs, manifestBlob)
	_, tag, _ := strings.Cut(name[strings.LastIndex(name, "/")+1:], ":")
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json",
			Digest:    manifestBlob.digest,
			Size:      int64(len(manifest)),
			// containerd names the imported image from the first annotation.
			Annotations: map[string]string{
				"io.containerd.image.name":          name,
				"org.opencontainers.image.ref.name": tag,
			},
			Platform: &platform{Architecture: runtime.GOARCH, OS: "linux"},
		}},
	})
	if err != nil {
		return err
	}

	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := tar.NewWriter(f)
	files := []blob{{digest: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}, {digest: "index.json", data: index}}
	for _, b := range files {
		if err := writeFile(w, b.digest, b.data); err != nil {
			return err
		}
	}
	for _, b := range blobs {
		if err := writeFile(w, "blobs/sha256/"+strings.TrimPrefix(b.digest, "sha256:"), b.data); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Close()
}

func writeFile(w *tar.Writer, name string, data []byte) error {
	if err := w.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := w.Write(data)
	return err
}

// tarDirectory returns a reproducible tar of dir's contents, paths relative to dir.
func tarDirectory(dir string) ([]byte, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, p := range paths {
		info, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return nil, err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return nil, err
		}
		hdr.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := w.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return nil, err
			}
			_, err = io.Copy(w, f)
			f.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
