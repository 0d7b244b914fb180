// Command imagebuild reproduces a multi-stage Dockerfile build without a Docker engine,
// so the images' recipes are exercised on machines that have none (CI included).
//
// It reads each Dockerfile with BuildKit's own parser and the build context with
// Docker's own .dockerignore matcher, then:
//   - runs every build stage on the host: `COPY . .` syncs the filtered context into
//     <out>/buildroot/<WORKDIR>, ENV and RUN run there with `sh -c`;
//   - assembles the last stage as a root filesystem <out>/<image>/rootfs from its
//     `COPY --from=<stage>` instructions, and writes what a container runtime would use
//     (base image, USER, EXPOSE, ENTRYPOINT, ENV, WORKDIR) to <out>/<image>/config.json.
//
// The runtime stage's base image is recorded, not fetched: there is no registry here.
// Any instruction it cannot reproduce faithfully is an error, never skipped.
//
// Usage: imagebuild -context DIR -out DIR NAME=DOCKERFILE...
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// imageConfig is what the runtime stage hands to a container runtime.
type imageConfig struct {
	Dockerfile   string   `json:"dockerfile"`
	Base         string   `json:"base"`
	User         string   `json:"user"`
	ExposedPorts []string `json:"exposedPorts"`
	Entrypoint   []string `json:"entrypoint"`
	Env          []string `json:"env"`
	WorkingDir   string   `json:"workingDir"`
	// Files copied from build stages, as image paths.
	Files []string `json:"files"`
}

func main() {
	contextDir := flag.String("context", ".", "build context (the directory docker build is given)")
	outDir := flag.String("out", "target/image-build", "where build stages run and images are assembled")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: imagebuild -context DIR -out DIR NAME=DOCKERFILE...")
		os.Exit(2)
	}
	for _, arg := range flag.Args() {
		name, dockerfile, ok := strings.Cut(arg, "=")
		if !ok || name == "" || dockerfile == "" {
			fail(fmt.Errorf("%q: expected NAME=DOCKERFILE", arg))
		}
		if err := buildImage(*contextDir, *outDir, name, dockerfile); err != nil {
			fail(fmt.Errorf("%s (%s): %w", name, dockerfile, err))
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "imagebuild:", err)
	os.Exit(1)
}

func buildImage(contextDir, outDir, name, dockerfile string) error {
	f, err := os.Open(dockerfile)
	if err != nil {
		return err
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		return err
	}
	stages, metaArgs, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		return err
	}
	if len(metaArgs) > 0 {
		return errors.New("ARG before FROM is not supported")
	}
	if len(stages) < 2 {
		return errors.New("expected a multi-stage build (a build stage and a runtime stage)")
	}
	// Every build stage shares one root: a later build reuses the earlier one's
	// cargo cache, as a Docker layer cache would.
	buildRoot := filepath.Join(outDir, "buildroot")
	built := map[string]bool{}
	for i, st := range stages[:len(stages)-1] {
		if st.Name == "" {
			return fmt.Errorf("build stage %d needs a name (FROM ... AS name)", i)
		}
		fmt.Printf("imagebuild: %s: stage %q (FROM %s) on the host\n", name, st.Name, st.BaseName)
		if err := runBuildStage(contextDir, buildRoot, st); err != nil {
			return fmt.Errorf("stage %q: %w", st.Name, err)
		}
		built[st.Name] = true
	}
	final := stages[len(stages)-1]
	cfg, err := assembleRuntime(buildRoot, filepath.Join(outDir, name), final, built)
	if err != nil {
		return fmt.Errorf("runtime stage: %w", err)
	}
	cfg.Dockerfile = dockerfile
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	fmt.Printf("imagebuild: %s: image assembled in %s\n", name, filepath.Join(outDir, name))
	return os.WriteFile(filepath.Join(outDir, name, "config.json"), append(out, '\n'), 0o644)
}

// runBuildStage executes WORKDIR, `COPY . .`, ENV and RUN of one build stage.
func runBuildStage(contextDir, buildRoot string, st instructions.Stage) error {
	workdir := "/"
	env := []string{}
	for _, cmd := range st.Commands {
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			workdir = imagePath(workdir, c.Path)
		case *instructions.EnvCommand:
			var err error
			if env, err = appendEnv(env, c); err != nil {
				return err
			}
		case *instructions.CopyCommand:
			if c.From != "" || len(c.SourcePaths) != 1 || c.SourcePaths[0] != "." || c.DestPath != "." {
				return fmt.Errorf("line %s: only `COPY . .` (the whole context) is reproducible in a build stage", c.String())
			}
			dest := filepath.Join(buildRoot, workdir)
			if err := syncContext(contextDir, dest); err != nil {
				return fmt.Errorf("COPY . .: %w", err)
			}
		case *instructions.RunCommand:
			if len(c.FlagsUsed) > 0 || len(c.Files) > 0 || !c.PrependShell {
				return fmt.Errorf("%s: only the plain shell form of RUN is reproducible", c.String())
			}
			script := strings.Join(c.CmdLine, " ")
			fmt.Printf("imagebuild:   RUN %s\n", script)
			run := exec.Command("sh", "-c", script)
			run.Dir = filepath.Join(buildRoot, workdir)
			run.Env = append(hostEnvForBuild(), env...)
			run.Stdout, run.Stderr = os.Stdout, os.Stderr
			if err := run.Run(); err != nil {
				return fmt.Errorf("RUN %s: %w", script, err)
			}
		default:
			return fmt.Errorf("%s: not reproducible without Docker in a build stage", cmd.Name())
		}
	}
	return nil
}

// hostEnvForBuild is the host's environment without what would send the build's
// output somewhere the Dockerfile's COPY --from does not look.
func hostEnvForBuild() []string {
	var env []string
	for _, kv := range os.Environ() {
		key, _, _ := strings.Cut(kv, "=")
		switch key {
		case "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR", "CARGO_BUILD_TARGET":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// assembleRuntime builds the last stage's root filesystem and configuration.
func assembleRuntime(buildRoot, imageDir string, st instructions.Stage, built map[string]bool) (*imageConfig, error) {
	rootfs := filepath.Join(imageDir, "rootfs")
	if err := os.RemoveAll(imageDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, err
	}
	cfg := &imageConfig{Base: st.BaseName, WorkingDir: "/", ExposedPorts: []string{}, Env: []string{}, Files: []string{}}
	for _, cmd := range st.Commands {
		switch c := cmd.(type) {
		case *instructions.CopyCommand:
			if !built[c.From] {
				return nil, fmt.Errorf("%s: only COPY --from=<earlier stage> is reproducible in the runtime stage", c.String())
			}
			if len(c.SourcePaths) != 1 || c.Chown != "" || c.Chmod != "" {
				return nil, fmt.Errorf("%s: one source, no --chown/--chmod", c.String())
			}
			src := filepath.Join(buildRoot, imagePath("/", c.SourcePaths[0]))
			dest := imagePath(cfg.WorkingDir, c.DestPath)
			if strings.HasSuffix(c.DestPath, "/") {
				dest = path.Join(dest, path.Base(c.SourcePaths[0]))
			}
			if err := copyFile(src, filepath.Join(rootfs, dest)); err != nil {
				return nil, fmt.Errorf("COPY --from=%s %s: %w", c.From, c.SourcePaths[0], err)
			}
			cfg.Files = append(cfg.Files, dest)
		case *instructions.UserCommand:
			cfg.User = c.User
		case *instructions.ExposeCommand:
			cfg.ExposedPorts = append(cfg.ExposedPorts, c.Ports...)
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				return nil, errors.New("ENTRYPOINT must use the exec (JSON) form: the runtime image has no shell")
			}
			cfg.Entrypoint = c.CmdLine
		case *instructions.EnvCommand:
			var err error
			if cfg.Env, err = appendEnv(cfg.Env, c); err != nil {
				return nil, err
			}
		case *instructions.WorkdirCommand:
			cfg.WorkingDir = imagePath(cfg.WorkingDir, c.Path)
		default:
			return nil, fmt.Errorf("%s: not reproducible without the base image", cmd.Name())
		}
	}
	return cfg, nil
}

// appendEnv expands an ENV instruction against env (as Docker does) and appends its pairs.
func appendEnv(env []string, c *instructions.EnvCommand) ([]string, error) {
	if err := c.Expand(expander(env)); err != nil {
		return nil, err
	}
	for _, kv := range c.Env {
		env = append(env, kv.Key+"="+kv.Value)
	}
	return env, nil
}

func expander(env []string) instructions.SingleWordExpander {
	lex := shell.NewLex('\\')
	return func(word string) (string, error) {
		out, _, err := lex.ProcessWord(word, shell.EnvsFromSlice(env))
		return out, err
	}
}

// imagePath resolves p against the image working directory dir.
func imagePath(dir, p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(dir, p)
}

// syncContext makes dest hold exactly the build context: the files of contextDir that
// .dockerignore does not exclude. Paths that .dockerignore excludes are left alone in
// dest (they can never come from the context, so there they are build output such as
// target/). Unchanged files keep their modification time, so incremental builds stay
// incremental.
func syncContext(contextDir, dest string) error {
	pm, err := ignoreMatcher(contextDir)
	if err != nil {
		return err
	}
	inContext := map[string]bool{}
	err = walkContext(pm, contextDir, func(p, rel string, d fs.DirEntry) error {
		inContext[rel] = true
		target := filepath.Join(dest, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			_ = os.Remove(target)
			return os.Symlink(link, target)
		default:
			return copyFileIfChanged(p, target)
		}
	})
	if err != nil {
		return err
	}
	// Remove what left the context since the last sync (a deleted source file).
	return walkContext(pm, dest, func(p, rel string, d fs.DirEntry) error {
		if !inContext[rel] {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
}

// walkContext calls fn for every path below root that .dockerignore does not exclude,
// with rel relative to root.
func walkContext(pm *patternmatcher.PatternMatcher, root string, fn func(p, rel string, d fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if excluded {
			// Below an excluded directory only a `!` pattern can bring a path back.
			if d.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		return fn(p, rel, d)
	})
}

func ignoreMatcher(contextDir string) (*patternmatcher.PatternMatcher, error) {
	var patterns []string
	f, err := os.Open(filepath.Join(contextDir, ".dockerignore"))
	switch {
	case err == nil:
		defer f.Close()
		if patterns, err = ignorefile.ReadAll(f); err != nil {
			return nil, fmt.Errorf(".dockerignore: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	return patternmatcher.New(patterns)
}

func copyFileIfChanged(src, dst string) error {
	si, err := os.Stat(src)
	if err != nil {
		return err
	}
	if di, err := os.Stat(dst); err == nil && di.Size() == si.Size() && di.ModTime().Equal(si.ModTime()) && di.Mode() == si.Mode() {
		return nil
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	return os.Chtimes(dst, si.ModTime(), si.ModTime())
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
