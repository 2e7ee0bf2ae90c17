"""The Mimi audio codec (moshi): prompt encoding and batched streaming decode."""
