"""The web console (issue: users and operators look instead of reading JSON): server-rendered
pages over the same functions as the JSON API, a server-side session in an HttpOnly,
SameSite=Strict cookie, a CSRF token on every form, a strict Content-Security-Policy, English and
Chinese. Off with CONSOLE_ENABLED=false."""
