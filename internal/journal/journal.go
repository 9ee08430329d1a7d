// Package journal keeps the agent's durable state in one JSON file that is
// replaced atomically (temp file, fsync, rename, fsync dir) on every change:
// the operation in flight and its step, installed versions, the highest
// manifest serial seen per channel, the event sequence, the events waiting to
// be published, remembered command acks, runtime settings, and the history.
//
// A crash leaves either the previous or the next state on disk, never a mix,
// so the agent can always tell at start-up what was in flight.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/quantix-os/update-agent/subjects"
)

// FileName is the journal's file inside the state directory.
const FileName = "journal.json"

// Limits on what the journal keeps, so it stays small however long a host runs.
const (
	MaxHistory = 200
	MaxAcks    = 256
	MaxOutbox  = 100_000
)

// ErrCorrupt reports a journal file that cannot be read back.
var ErrCorrupt = errors.New("journal corrupt")

// Step of a component inside an operation. The order matters: recovery
// compares steps to know what may have touched the installed tree.
type Step string

// Component steps, in order.
const (
	StepPending    Step = "pending"
	StepDownloaded Step = "downloaded"
	StepStaged     Step = "staged"
	StepSwapping   Step = "swapping" // about to swap the trees: the installed dir may be old or new (or absent, without RENAME_EXCHANGE)
	StepSwapped    Step = "swapped"  // new tree in place, old one in the backup dir
	StepDone       Step = "done"     // restarted and healthy
)

// Phase of an operation.
type Phase string

// Operation phases.
const (
	PhaseDownloading Phase = "downloading"
	PhaseStaging     Phase = "staging"
	PhaseInstalling  Phase = "installing"
	PhaseRollingBack Phase = "rolling_back"
	// A/B phases.
	PhaseMaintenance  Phase = "maintenance"
	PhaseWriting      Phase = "writing"
	PhaseRebooting    Phase = "rebooting" // trial boot armed, waiting for the reboot
	PhaseBootVerified Phase = "boot_verified"
)

// Component is one component's progress inside an operation.
type Component struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	From    string `json:"from,omitempty"`
	Step    Step   `json:"step"`
	HadOld  bool   `json:"hadOld"` // the install dir existed before; false means a new component
	Dir     string `json:"dir"`
	Staging string `json:"staging"`
	// StagingIno is the inode of the staging tree, journaled before the
	// swap: recovery finds the new tree by it wherever the swap left it.
	StagingIno uint64 `json:"stagingIno,omitempty"`
	Backup     string `json:"backup"`
	Download   string `json:"download"`
}

// Operation is the update in flight.
type Operation struct {
	ID          string      `json:"id"`
	Kind        string      `json:"kind"` // subjects.UpdateTypeComponent or UpdateTypeFull
	Version     string      `json:"version"`
	From        string      `json:"from"`
	Channel     string      `json:"channel"`
	Phase       Phase       `json:"phase"`
	ForceReboot bool        `json:"forceReboot"`
	Manifest    []byte      `json:"manifest"` // the verified manifest, so a restart needs no network to know the plan
	Components  []Component `json:"components"`
	Attempts    int         `json:"attempts"` // starts of this operation; bounded so a crash loop ends in failure
	Started     time.Time   `json:"started"`
	Cancelled   string      `json:"cancelled,omitempty"` // reason, once a cancel was asked

	// A/B state.
	MaintenanceID string `json:"maintenanceId,omitempty"`
	TargetSlot    string `json:"targetSlot,omitempty"`
	FromSlot      string `json:"fromSlot,omitempty"`
}

// Entry is one finished operation in the history.
type Entry struct {
	OperationID string             `json:"operationId"`
	Kind        string             `json:"kind"`
	Version     string             `json:"version"`
	FromVersion string             `json:"fromVersion"`
	Result      subjects.EventType `json:"result"`
	Error       string             `json:"error,omitempty"`
	Components  []string           `json:"components,omitempty"`
	StartedAt   time.Time          `json:"startedAt"`
	FinishedAt  time.Time          `json:"finishedAt"`
}

// Pending is an event not yet acknowledged by the bus, in emission order.
type Pending struct {
	Seq     uint64          `json:"seq"`
	ID      string          `json:"id"`
	Agent   bool            `json:"agent,omitempty"` // AgentEvent, else UpdateEvent
	Payload json.RawMessage `json:"payload"`
}

// Settings are the runtime settings changed through the REST facade; nil
// fields keep the config file's value.
type Settings struct {
	Channel       *string        `json:"channel,omitempty"`
	AutoCheck     *bool          `json:"autoCheck,omitempty"`
	AutoApply     *bool          `json:"autoApply,omitempty"`
	CheckInterval *time.Duration `json:"checkInterval,omitempty"`
}

// State is everything the journal holds.
type State struct {
	Initialized    bool              `json:"initialized"` // versions were imported from versions.json
	Versions       subjects.Versions `json:"versions"`
	CurrentVersion string            `json:"currentVersion"`
	Serials        map[string]uint64 `json:"serials"`
	Seq            uint64            `json:"seq"`
	Op             *Operation        `json:"op,omitempty"`
	Acks           []Ack             `json:"acks,omitempty"`
	History        []Entry           `json:"history,omitempty"`
	Outbox         []Pending         `json:"outbox,omitempty"`
	Dropped        uint64            `json:"dropped,omitempty"` // events dropped when the outbox was full
	Settings       Settings          `json:"settings"`
	BootSlot       string            `json:"bootSlot,omitempty"`
	// Releases are maintenance windows to hand back to vDC: written with the
	// end of their operation, removed once vDC acked, so a crash in between
	// cannot hold a host's VMs away for good.
	Releases  []subjects.MaintenanceRelease `json:"releases,omitempty"`
	LastCheck time.Time                     `json:"lastCheck,omitzero"`
}

// Ack is a remembered answer to a command, for idempotency.
type Ack struct {
	Ack  subjects.Ack `json:"ack"`
	Time time.Time    `json:"time"`
}

// FindAck returns the remembered Ack for operationID.
func (s *State) FindAck(operationID string) (subjects.Ack, bool) {
	for _, a := range s.Acks {
		if a.Ack.OperationID == operationID {
			return a.Ack, true
		}
	}
	return subjects.Ack{}, false
}

// RememberAck records ack, dropping the oldest beyond MaxAcks.
func (s *State) RememberAck(ack subjects.Ack, now time.Time) {
	s.Acks = append(s.Acks, Ack{Ack: ack, Time: now})
	if len(s.Acks) > MaxAcks {
		s.Acks = s.Acks[len(s.Acks)-MaxAcks:]
	}
}

// AddHistory appends e, dropping the oldest beyond MaxHistory.
func (s *State) AddHistory(e Entry) {
	s.History = append(s.History, e)
	if len(s.History) > MaxHistory {
		s.History = s.History[len(s.History)-MaxHistory:]
	}
}

// Store is the journal on disk. Its methods are safe for concurrent use.
type Store struct {
	path string
	dir  string

	mu    sync.Mutex
	state State
	syncs int // for tests and metrics
}

// Open reads the journal in dir, creating dir if needed. A missing file is an
// empty state; an unreadable one is ErrCorrupt (the agent must not guess).
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: create state dir: %w", err)
	}
	s := &Store{path: filepath.Join(dir, FileName), dir: dir}
	// A crash may leave a temp file behind: it was never renamed, so it is not state.
	_ = os.Remove(s.path + ".tmp")
	b, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("journal: read %s: %w", s.path, err)
	default:
		if err := json.Unmarshal(b, &s.state); err != nil {
			return nil, fmt.Errorf("journal: decode %s: %w: %w", s.path, ErrCorrupt, err)
		}
	}
	if s.state.Serials == nil {
		s.state.Serials = map[string]uint64{}
	}
	if s.state.Versions.Components == nil {
		s.state.Versions.Components = map[string]string{}
	}
	return s, nil
}

// Path is the journal file's path.
func (s *Store) Path() string { return s.path }

// View calls fn with the state under the lock; fn must not keep references.
func (s *Store) View(fn func(*State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.state)
}

// Update applies fn to a copy of the state and, when fn succeeds, persists it
// durably before making it current. When persisting fails the in-memory state
// stays as it was, so memory never runs ahead of disk.
func (s *Store) Update(fn func(*State) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := clone(s.state)
	if err := fn(&next); err != nil {
		return err
	}
	if err := s.write(&next); err != nil {
		return err
	}
	s.state = next
	return nil
}

// clone deep-copies st for Update's fn to change. It copies by hand: a JSON
// round trip (which cannot miss a field) cost twice the write itself with a
// long outbox. Event payloads and the journaled manifest are never changed
// in place, so the copies share them. TestCloneCopiesEveryField fails when a
// field of State is added without a line here.
func clone(st State) State {
	out := st
	out.Versions.Components = maps.Clone(st.Versions.Components)
	if out.Versions.Components == nil {
		out.Versions.Components = map[string]string{}
	}
	out.Serials = maps.Clone(st.Serials)
	if out.Serials == nil {
		out.Serials = map[string]uint64{}
	}
	if st.Op != nil {
		op := *st.Op
		op.Components = slices.Clone(st.Op.Components)
		out.Op = &op
	}
	out.Acks = slices.Clone(st.Acks)
	out.History = slices.Clone(st.History)
	for i, e := range out.History {
		out.History[i].Components = slices.Clone(e.Components)
	}
	out.Outbox = slices.Clone(st.Outbox)
	out.Settings = Settings{
		Channel:       clonePtr(st.Settings.Channel),
		AutoCheck:     clonePtr(st.Settings.AutoCheck),
		AutoApply:     clonePtr(st.Settings.AutoApply),
		CheckInterval: clonePtr(st.Settings.CheckInterval),
	}
	out.Releases = slices.Clone(st.Releases)
	return out
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (s *Store) write(st *State) error {
	// Compact: indenting re-scans every event payload in the outbox, and
	// the file is for the agent (jq shows it to a person).
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("journal: encode: %w", err)
	}
	if err := WriteFileAtomic(s.path, b, 0o600); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	s.syncs++
	return nil
}

// WriteFileAtomic replaces path with data: temp file in the same directory,
// fsync, rename, fsync of the directory. Readers see the old or the new file.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir fsyncs a directory so that renames inside it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
