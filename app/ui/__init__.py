"""The page: its components (`layout`), which event calls which handler (`events`), the
handlers (`handlers`), the public API endpoints (`api`) and the text it shows (`text`)."""
