package broker

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/rs/zerolog"
)

// SlogLogger returns a zerolog.Logger that writes every event to l: its
// level, message and fields become an slog record. It is for callers who
// log with log/slog; stalk logs through zerolog.
func SlogLogger(l *slog.Logger) zerolog.Logger {
	if l == nil {
		return zerolog.Nop()
	}
	return zerolog.New(slogWriter{l}).Level(zerolog.TraceLevel)
}

type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	return w.WriteLevel(zerolog.NoLevel, p)
}

func (w slogWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	lv := slogLevel(level)
	ctx := context.Background()
	if !w.l.Enabled(ctx, lv) {
		return len(p), nil
	}
	var fields map[string]any
	if err := json.Unmarshal(p, &fields); err != nil {
		w.l.Log(ctx, lv, string(p))
		return len(p), nil
	}
	msg, _ := fields[zerolog.MessageFieldName].(string)
	delete(fields, zerolog.MessageFieldName)
	delete(fields, zerolog.LevelFieldName)
	attrs := make([]slog.Attr, 0, len(fields))
	for k, v := range fields {
		attrs = append(attrs, slog.Any(k, v))
	}
	w.l.LogAttrs(ctx, lv, msg, attrs...)
	return len(p), nil
}

func slogLevel(l zerolog.Level) slog.Level {
	switch {
	case l <= zerolog.DebugLevel:
		return slog.LevelDebug
	case l == zerolog.InfoLevel || l == zerolog.NoLevel:
		return slog.LevelInfo
	case l == zerolog.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}
