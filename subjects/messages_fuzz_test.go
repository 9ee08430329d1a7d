package subjects

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecodeMessages decodes arbitrary bytes as every message of the
// contract, as the agent and vDC do with what arrives on the bus: Decode
// never panics, and what it accepts encodes and decodes again to the same
// value (so a relayed message means what the original meant).
func FuzzDecodeMessages(f *testing.F) {
	for _, s := range []string{
		`{"accepted":true,"operationId":"op-1"}`,
		`{"nodeId":"a","status":"downloading","progress":{"currentComponent":"qx-node","downloadedBytes":1,"totalBytes":2,"percentage":50},"versions":{"os":"0.0.5","components":{"qx-node":"0.0.5"}}}`,
		`{"nodeId":"a","available":true,"currentVersion":"0.0.5","availableVersion":"0.0.6","channel":"dev","components":[{"name":"qx-node","newVersion":"0.0.6","sizeBytes":5}],"fullImageAvailable":false,"totalDownloadSize":5}`,
		`{"id":"e1","nodeId":"a","seq":3,"time":"2025-01-01T00:00:00Z","type":"progress","status":"downloading","progress":40,"bytesDone":4,"bytesTotal":10}`,
		`{"id":"e2","nodeId":"a","seq":1,"time":"2025-01-01T00:00:00.123456789+02:00","type":"online","versions":{"os":"1","components":{}},"bootSlot":"a"}`,
		`{"maintenanceId":"m","nodeId":"a","state":"draining","vmsRemaining":2}`,
		`{"nodeId":"a","status":"idle","currentVersion":"1","versions":{"os":"1","components":null},"lastSeq":9,"updatedAt":"2025-01-01T00:00:00Z"}`,
		`{"channel":"dev","signedManifest":{"signed":"e30="}}`,
		`{"accepted":true,"ACCEPTED":false}`, `{"time":"10000-01-01T00:00:00Z"}`, `null`, `{} {}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	news := []func() any{
		func() any { return new(Ack) }, func() any { return new(StatusReport) }, func() any { return new(CheckReply) },
		func() any { return new(CheckRequest) }, func() any { return new(ApplyCommand) }, func() any { return new(CancelCommand) },
		func() any { return new(UpdateEvent) }, func() any { return new(AgentEvent) }, func() any { return new(NodeState) },
		func() any { return new(MaintenanceRequest) }, func() any { return new(MaintenanceEvent) },
		func() any { return new(MaintenanceRelease) }, func() any { return new(MaintenanceStatusRequest) },
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, mk := range news {
			v := mk()
			if Decode(data, v) != nil {
				continue
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%T decoded from %q does not encode: %v", v, data, err)
			}
			w := mk()
			if err := Decode(b, w); err != nil {
				t.Fatalf("%T re-encoded as %s does not decode: %v", v, b, err)
			}
			b2, _ := json.Marshal(w)
			if !bytes.Equal(b, b2) || !reflect.DeepEqual(normal(t, b), normal(t, b2)) {
				t.Fatalf("%T changed in a round trip: %s → %s", v, b, b2)
			}
		}
	})
}

// normal decodes JSON generically, for comparing documents.
func normal(t *testing.T, b []byte) any {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}
