"""The one exception type raised by the data readers."""


class DataError(ValueError):
  """A data file is missing, corrupt, truncated or not what was expected.

  The message is one line that names the offending file (or URL) and says
  what was expected instead.
  """
