"""`python -m service.server`: see service/server/server.py."""
from service.server.server import main

if __name__ == "__main__":
    main()
