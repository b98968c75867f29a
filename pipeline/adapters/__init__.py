"""Dataset adapters: native formats -> manifest rows. Dataset quirks live only here."""
