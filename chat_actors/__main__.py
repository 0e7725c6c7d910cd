"""`python -m chat_actors serve ...`: the same command as the `chat-actors` script."""

import sys

from chat_actors.cli import main

if __name__ == "__main__":
    sys.exit(main())
