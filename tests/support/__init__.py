"""What the tests share: services, fixtures, live and fault farms, ASR, fakes and the `needs` rule."""
