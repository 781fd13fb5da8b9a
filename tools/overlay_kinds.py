"""The overlay suite's second part: how spammers answer a caught caption (tests, benchmarks).

Each clip moves its camera — still, panning, zooming in, or hand-held shake — and plants the
variants that slip past a plain caption check, each labelled with its ``case``:

- ``translucent``: a caption at 40–60% opacity over the picture (a busy one for the shaking camera);
- ``marquee``: a line scrolling left along the top or bottom edge at 120–300 px/s;
- ``corner16``: 16 px text in a corner, at 720p and 1080p;
- ``vertical``: one character per line along the frame's edge (red with a white outline);
- ``qr_skew``: a QR code tilted in perspective and rotated by 20–30°;
- ``qr_logo``: a QR code with error correction H and a logo over its centre;

plus clean look-alikes of the same kinds (``expect = ""``), which must stay silent. Written by
``python tools/make_overlay_suite.py OUT_DIR --kinds``.
"""

from __future__ import annotations

from make_overlay_suite import Overlay, SuiteClip

RED = (230, 30, 30)

KINDS: tuple[SuiteClip, ...] = (
    SuiteClip("kinds-still-720p", "coffee", 1280, 720, 15, 22, 0.0, (
        Overlay(2.3, 6.5, "caption", "加微信领红包", 28, "right-edge", "contact_spam", case="vertical", vertical=True, color=RED),
        Overlay(4.4, 8, "caption", "星巴克 Starbucks 买一送一", 16, "top-right", "unauthorized_brand", case="corner16"),
        Overlay(8.4, 12.5, "caption", "网赌平台 注册就送彩金 真人荷官在线发牌", 30, "bottom-left", "gambling", band=True,
                case="marquee", speed=200),
        Overlay(14.6, 18, "qr", "https://evil.example/logo?s=1", 150, "top-left", "qr_code", case="qr_logo", logo=True),
        Overlay(19.2, 21.5, "caption", "今晚的舞台真好看 谢谢大家", 30, "bottom-left", "", case="translucent", alpha=0.5),
    )),
    SuiteClip("kinds-pan-720p", "astronaut", 1280, 720, 15, 22, 16.0, (
        Overlay(2.6, 6.5, "caption", "加微信领红包", 28, "right-edge", "contact_spam", case="vertical", vertical=True, color=RED),
        Overlay(3.4, 7, "caption", "网赌平台 注册送彩金", 16, "bottom-right", "gambling", case="corner16"),
        Overlay(8.2, 12, "caption", "KFC 肯德基 疯狂星期四 限时特惠", 28, "top-left", "unauthorized_brand", case="marquee", speed=120),
        Overlay(13.7, 17, "qr", "https://evil.example/skew?a=20", 200, "top-right", "qr_code", case="qr_skew", skew=20),
        Overlay(18.3, 21.5, "caption", "欢迎来到直播间", 28, "left-edge", "", case="vertical", vertical=True),
        Overlay(18.3, 21.5, "caption", "今晚的舞台真好看 谢谢大家", 30, "center-bottom", "", case="translucent", alpha=0.5),
    )),
    SuiteClip("kinds-zoom-1080p", "rocket", 1920, 1080, 15, 22, 2.0, (
        Overlay(2.5, 6, "caption", "QQ群 12345678 进群领福利", 16, "bottom-left", "contact_spam", case="corner16"),
        Overlay(7.8, 12, "caption", "Monster Energy 魔爪 限时特惠", 34, "bottom-left", "unauthorized_brand", case="marquee",
                speed=300),
        Overlay(8.5, 12, "caption", "菠菜网 老虎机 下注送", 36, "top-left", "gambling", case="translucent", alpha=0.4),
        Overlay(13.4, 17, "qr", "https://evil.example/zoom?l=h", 220, "right-edge", "qr_code", case="qr_logo", logo=True),
        Overlay(18.2, 21.5, "caption", "欢迎新朋友 点点关注不迷路", 30, "bottom-left", "", case="marquee", speed=150),
    ), camera="zoom"),
    SuiteClip("kinds-shake-720p", "immunohistochemistry", 1280, 720, 15, 22, 6.0, (
        Overlay(2.4, 6.5, "caption", "加微信领红包", 28, "right-edge", "contact_spam", case="vertical", vertical=True, color=RED),
        Overlay(3.2, 7, "caption", "真人荷官 在线百家乐 注册就送", 30, "top-left", "gambling", case="marquee", speed=250),
        Overlay(8.1, 12, "caption", "Starbucks 星巴克 新品", 32, "bottom-left", "unauthorized_brand", case="translucent",
                alpha=0.55),
        Overlay(13.6, 17, "qr", "https://evil.example/tilt?b=30", 220, "top-left", "qr_code", case="qr_skew", skew=30),
        Overlay(18.4, 21.5, "caption", "谢谢大家的支持", 16, "bottom-right", "", case="corner16"),
    ), camera="shake"),
)  # fmt: skip
