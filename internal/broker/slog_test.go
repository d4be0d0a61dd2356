package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSlogLogger(t *testing.T) {
	var buf bytes.Buffer
	l := SlogLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	l.Debug().Msg("not shown")
	l.Warn().Err(errors.New("boom")).Str("queue", "q1").Int("n", 3).Msg("connect failed")
	var rec map[string]any
	require.NoError(t, json.Unmarshal(buf.Bytes(), &rec))
	assert.Equal(t, "WARN", rec["level"])
	assert.Equal(t, "connect failed", rec["msg"])
	assert.Equal(t, "q1", rec["queue"])
	assert.Equal(t, "boom", rec["error"])
	assert.EqualValues(t, 3, rec["n"])
	assert.NotContains(t, buf.String(), "not shown")
}
