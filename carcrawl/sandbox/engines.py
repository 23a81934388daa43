"""Search-result pages in the real engines' formats, rendered from sandbox results.

Each renderer copies the structure of the real captures in ``shared/fixtures/search`` closely
enough that a parser written against the real engine parses the sandbox too:

- Bing ``/images/async`` fragments and ``/images/search`` pages: ``<a class="iusc" m="{...}">``
  with HTML-escaped JSON (murl, turl, purl, t ...), rows of ``ul.dgControl_list``, ``data-nextUrl``.
- DuckDuckGo: the landing page carrying ``vqd="4-..."`` and the ``i.js`` JSON (results, next, vqd).
- Openverse ``/v1/images/``: result_count, page_count, page_size, page, results with licence fields.
- Wikimedia Commons ``action=query&generator=search``: continue.gsroffset, searchinfo.totalhits,
  imageinfo with extmetadata (LicenseShortName, Artist ...).
- Google ``tbm=isch&asearch=ichunk``: the length-framed chunks with ``rg_meta`` JSON, and the
  real "sorry" CAPTCHA page for a blocked client.

Renderers are pure (results in, bytes out) so they can be tested without a server.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import uuid
from collections.abc import Sequence
from email.utils import formatdate
from urllib.parse import quote, quote_plus, urlsplit

from carcrawl.sandbox.layout import ResultItem

BING_PAGE = 35  # results per Bing async page (the real default ``count``)
DDG_PAGE = 20  # results per i.js page (real: 100; smaller so the sandbox exercises paging)
OPENVERSE_PAGE = 20  # Openverse's default page_size
WIKIMEDIA_PAGE = 10  # gsrlimit default
GOOGLE_PAGE = 20  # results per ichunk page (real: 100)

_LICENSES = (  # (openverse code, version, url, Commons short name)
    ("by", "2.0", "https://creativecommons.org/licenses/by/2.0/", "CC BY 2.0"),
    ("by-sa", "4.0", "https://creativecommons.org/licenses/by-sa/4.0/", "CC BY-SA 4.0"),
    ("cc0", "1.0", "https://creativecommons.org/publicdomain/zero/1.0/", "CC0"),
    ("by", "4.0", "https://creativecommons.org/licenses/by/4.0/", "CC BY 4.0"),
    ("pdm", "1.0", "https://creativecommons.org/publicdomain/mark/1.0/", "Public domain"),
)
_CREATORS = ("Sam Driver", "Alex Garage", "Kim Roadside", "Jo Carspotter", "Pat Lens", "Ray Chrome")


def _hx(*parts: object, n: int = 16) -> str:
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=n).hexdigest()


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def _site(url: str) -> str:
    return urlsplit(url).hostname or ""


# --------------------------------------------------------------------------------------- Bing
def _bing_item(item: ResultItem, query: str, pos: int) -> str:
    md5 = _hx("md5", item.url)
    cid = md5[:8]
    mid = _hx("mid", item.url, n=20).upper()
    thid = f"OIP.{_hx('thid', item.url, n=12)}"
    m = {
        "sid": "",
        "cturl": "",
        "cid": cid,
        "purl": item.page_url,
        "murl": item.url,
        "turl": item.thumb_url,
        "md5": md5,
        "shkey": "",
        "t": item.title,
        "mid": mid,
        "desc": item.title,
    }
    m_attr = _esc(json.dumps(m, ensure_ascii=False, separators=(",", ":")))
    q_plus = quote_plus(query)
    detail = _esc(
        f"/images/search?view=detailV2&ccid={cid}&id={mid}&thid={thid}&mediaurl={quote(item.url, safe='')}"
        f"&exph={item.height}&expw={item.width}&q={q_plus}&FORM=IRPRST&ck={md5.upper()}"
        f"&selectedIndex={pos}&itb=0"
    )
    w = max(120, min(320, round(180 * item.width / max(1, item.height))))
    title = _esc(item.title)
    site = _esc(_site(item.page_url))
    aria = _esc(f"Image result for {query}")
    return (
        f'<li data-idx = {pos + 1} style="width:{w}px; height: 228px"><div class="iuscp isv smallheight"\n'
        f'                 style="height:228px;width:{w}px" data-hovstyle="" data-evt="1"data-vie=1>'
        f'<div class="imgpt"><a aria-label="{aria}" role="link" class="iusc" style="height:180px;width:{w}px" '
        f'm="{m_attr}" data-fnvg="1" data-idpos="0.90" href="{detail}" h="ID=images,5025.1">'
        f'<div class="img_cont hoff"><img class="mimg" style="background-color:#654933;color:#654933" '
        f'height="180" width="{w}" src="{_esc(item.thumb_url)}" alt="{aria}"/></div></a>'
        f'<div class="img_info hon"><span class="nowrap">{item.width}&#215;{item.height}</span>'
        f'<div class="lnkw"><a title="{site}" target="_blank" data-hookid="pgdom" href="{_esc(item.page_url)}" '
        f'h="ID=images,5280.1"><span class="cipl "></span>{site}</a></div></div></div>'
        f'<div class="infopt" style="height:48px; " data-hovstyle=""><a class="inflnk" aria-label="{title}" '
        f'href="{detail}" h="ID=images,5025.2"></a><div class="infnmpt"><div class="infpd hoff">'
        f'<ul class="b_dataList"><li><a title="{title}" href="{detail}" h="ID=images,5025.3">{title}</a>'
        f"</li></ul></div></div></div></div></li>"
    )


def _bing_grid(items: Sequence[ResultItem], query: str, first: int, count: int, more: bool, comp: int) -> str:
    next_url = ""
    if more:
        next_url = _esc(
            f"/images/async?q={quote_plus(query)}&first={first + count}&count={count}&cw=1024&ch=768"
            f"&relp={count}&datsrc=I&layout=RowBased_Landscape&mmasync=1"
        )
    rows = []
    for r in range(0, len(items), 5):
        lis = "".join(_bing_item(it, query, first - 1 + r + j) for j, it in enumerate(items[r : r + 5]))
        rows.append(f'<ul data-row = {r // 5} class="dgControl_list " data-infullrow=1 style="" >{lis}</ul>')
    return (
        '<div class="dg_b isvctrl" data-ufmc="savim1" data-svptnk="Images" data-svcptid="ImageResults"><div \n'
        f'    id="mmComponent_images_{comp}" \n    class="dgControl dtl hover" \n'
        f'    style="width:1004px" data-nextUrl="{next_url}" data-postData="" data-iid="images.5412" '
        f'data-layout="row" >{"".join(rows)}</div></div>'
    )


def bing_async(items: Sequence[ResultItem], query: str, first: int, count: int, more: bool) -> bytes:
    """A ``/images/async`` fragment (no ``<html>``), like the real infinite-scroll response."""
    style = "<style type=\"text/css\">.dgControl>ul{position:relative;padding:0}</style>"
    return (style + _bing_grid(items, query, first, count, more, 1)).encode()


def bing_page(items: Sequence[ResultItem], query: str, first: int, count: int, more: bool) -> bytes:
    """A full ``/images/search`` page: header with the search box, the first grid, a footer."""
    q = _esc(query)
    return (
        '<!DOCTYPE html><html dir="ltr" lang="en" xml:lang="en" xmlns="http://www.w3.org/1999/xhtml">'
        f"<head><title>{q} - Search Images</title>"
        '<meta content="text/html; charset=utf-8" http-equiv="content-type" />'
        f'<meta property="og:title" content="{q} - Bing" /></head><body class="b_respl">'
        '<header id="b_header" role="banner"><form action="/images/search" id="sb_form">'
        f'<input class="b_searchbox " id="sb_form_q" name="q" type="search" value="{q}" maxlength="2000" />'
        '</form></header><div id="b_content"><div id="vm_c"><div id="hoverpane"></div>'
        + _bing_grid(items, query, first, count, more, 2)
        + '</div></div><footer id="b_footer" role="contentinfo"><span>&#169; 2025 Microsoft</span></footer>'
        "</body></html>"
    ).encode()


def bing_captcha(query: str) -> bytes:
    """What Bing shows a client it has decided is a robot: a challenge page, no results."""
    q = _esc(query)
    return (
        '<!DOCTYPE html><html><head><title>Bing</title><meta charset="utf-8"/></head><body>'
        '<div id="b_content"><div id="b_captcha" class="b_captcha captcha">'
        "<h1>One last step</h1><p>Please solve the challenge below to continue.</p>"
        "<p>Our systems have detected unusual traffic from your computer network.</p>"
        f'<form id="turing-form" action="/turing/captcha/challenge" method="post">'
        f'<input type="hidden" name="q" value="{q}"/><div id="turingcaptcha" class="captcha_container">'
        "</div></form></div></div></body></html>"
    ).encode()


# ------------------------------------------------------------------------------- DuckDuckGo
def ddg_vqd(query: str, seed: int) -> str:
    """The token DuckDuckGo hands out per query (``4-`` and a long number)."""
    n = int(_hx("vqd", seed, " ".join(query.split()), n=16), 16)
    return f"4-{n % 10**39:039d}"


def ddg_landing(query: str, vqd: str) -> bytes:
    q = _esc(query)
    qe = quote_plus(query)
    return (
        '<!DOCTYPE html><html lang="en-US" class="no-js has-zcm"><head><meta charset="utf-8">'
        f"<title>{q} at DuckDuckGo</title>"
        f'<meta name="description" content="DuckDuckGo. Privacy, Simplified."></head>'
        f'<body class="body--serp"><input id="search_form_input" type="text" name="q" value="{q}">'
        '<div id="zero_click_wrapper"></div><div id="links_wrapper"><div class="results--main">'
        '<div id="links" class="results"></div></div></div>'
        f"<script type=\"text/javascript\">DDG.ready(function(){{DDG.duckbar.future_signal_tab({{signal:'high',"
        f"from:'images'}});}});</script><script>vqd=\"{vqd}\";DDG.deep.initialize('/d.js?q={qe}&l=us-en"
        f"&s=0&ct=US&vqd={vqd}&bing_market=en-US&p_ent=&ex=-1&sp=0');</script></body></html>"
    ).encode()


def ddg_ijs(
    items: Sequence[ResultItem], query: str, vqd: str, offset: int, more: bool, safe: str = "1"
) -> bytes:
    qe = quote(query)
    results = [
        {
            "discovery_date": f"20{10 + int(it.token[:2], 16) % 15}-0{1 + int(it.token[2], 16) % 9}-1{int(it.token[3], 16) % 10}T08:29:43.0000000Z",
            "encoding_format": "png" if it.url.endswith(".png") else "jpeg",
            "height": it.height,
            "image": it.url,
            "image_token": _hx("itok", it.url, n=32),
            "source": "Bing",
            "thumbnail": it.thumb_url,
            "thumbnail_token": _hx("ttok", it.url, n=32),
            "title": it.title,
            "url": it.page_url,
            "width": it.width,
        }
        for it in items
    ]
    body: dict[str, object] = {
        "ads": None,
        "query": query,
        "queryEncoded": qe,
        "response_type": "images",
        "results": results,
        "vqd": {qe: vqd},
    }
    if more:
        body["next"] = f"i.js?q={qe}&o=json&p={safe}&s={offset + len(items)}&u=bing&f=,,,,,&l=us-en"
    return json.dumps(body).encode()


# -------------------------------------------------------------------------------- Openverse
def _license(item: ResultItem) -> tuple[str, str, str, str]:
    return _LICENSES[int(item.token[:4], 16) % len(_LICENSES)]


def _creator(item: ResultItem) -> str:
    return _CREATORS[int(item.token[4:8], 16) % len(_CREATORS)]


def openverse_json(
    items: Sequence[ResultItem], api_base: str, result_count: int, page_count: int, page: int, page_size: int
) -> bytes:
    results = []
    for it in items:
        lic, ver, lic_url, short = _license(it)
        creator = _creator(it)
        uid = str(uuid.UUID(_hx("ov", it.url, n=16)))
        attribution = (
            f'"{it.title}" by {creator} is licensed under {short}. To view a copy of this license, visit {lic_url}.'
            if lic not in ("cc0", "pdm")
            else f'"{it.title}" by {creator} is marked with {short}. To view the terms, visit {lic_url}.'
        )
        results.append(
            {
                "id": uid,
                "title": it.title,
                "indexed_on": "2024-01-01T00:00:00Z",
                "foreign_landing_url": it.page_url,
                "url": it.url,
                "creator": creator,
                "creator_url": f"{it.page_url.rsplit('/', 2)[0]}/people/{quote(creator)}",
                "license": lic,
                "license_version": ver,
                "license_url": lic_url,
                "provider": "flickr",
                "source": "flickr",
                "category": "photograph",
                "filesize": None,
                "filetype": it.url.rsplit(".", 1)[-1],
                "tags": [{"name": w, "accuracy": None} for w in it.title.lower().split()[:5]],
                "attribution": attribution,
                "fields_matched": ["title", "tags.name"],
                "mature": False,
                "height": it.height,
                "width": it.width,
                "thumbnail": it.thumb_url,
                "detail_url": f"{api_base}/v1/images/{uid}/",
                "related_url": f"{api_base}/v1/images/{uid}/related/",
                "unstable__sensitivity": [],
            }
        )
    return json.dumps(
        {
            "result_count": result_count,
            "page_count": page_count,
            "page_size": page_size,
            "page": page,
            "results": results,
        }
    ).encode()


# -------------------------------------------------------------------------------- Wikimedia
def wikimedia_json(
    items: Sequence[ResultItem],
    query: str,
    offset: int,
    totalhits: int,
    more: bool,
    extmetadata: bool,
    formatversion2: bool,
    limit: int,
) -> bytes:
    pages = []
    for k, it in enumerate(items):
        lic, _ver, lic_url, short = _license(it)
        creator = _creator(it)
        ext = it.url.rsplit(".", 1)[-1]
        fname = f"{it.title} {it.token[:6]}.{ext}".replace("|", "-")
        title = f"File:{fname}"
        wiki = "https://commons.wikimedia.org/wiki/" + quote(fname.replace(" ", "_"))
        pageid = int(it.token[:7], 16)
        info: dict[str, object] = {
            "size": 100_000 + int(it.token[7:12], 16) % 900_000,
            "width": it.width,
            "height": it.height,
            "url": it.url,
            "descriptionurl": wiki,
            "descriptionshorturl": f"https://commons.wikimedia.org/w/index.php?curid={pageid}",
            "mime": "image/png" if ext == "png" else "image/jpeg",
        }
        if extmetadata:
            artist = f'<a href="//commons.wikimedia.org/wiki/User:{quote(creator)}" title="User:{creator}">{creator}</a>'
            info["extmetadata"] = {
                "DateTime": {"value": "2021-03-03 22:59:22", "source": "mediawiki-metadata", "hidden": ""},
                "ObjectName": {"value": it.title, "source": "mediawiki-metadata", "hidden": ""},
                "ImageDescription": {"value": it.title, "source": "commons-desc-page"},
                "Credit": {"value": '<span class="int-own-work" lang="en">Own work</span>', "source": "commons-desc-page", "hidden": ""},
                "Artist": {"value": artist, "source": "commons-desc-page"},
                "LicenseShortName": {"value": short, "source": "commons-desc-page", "hidden": ""},
                "UsageTerms": {"value": short, "source": "commons-desc-page", "hidden": ""},
                "AttributionRequired": {"value": "false" if lic in ("cc0", "pdm") else "true", "source": "commons-desc-page", "hidden": ""},
                "LicenseUrl": {"value": lic_url, "source": "commons-desc-page", "hidden": ""},
                "Copyrighted": {"value": "False" if lic in ("cc0", "pdm") else "True", "source": "commons-desc-page", "hidden": ""},
                "License": {"value": f"{lic}-{_ver}" if lic != "pdm" else "pd", "source": "commons-templates", "hidden": ""},
            }
        pages.append(
            {
                "pageid": pageid,
                "ns": 6,
                "title": title,
                "index": offset + k + 1,
                "imagerepository": "local",
                "imageinfo": [info],
            }
        )
    body: dict[str, object] = {}
    if more:
        body["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
    else:
        body["batchcomplete"] = True if formatversion2 else ""
    query_obj: dict[str, object] = {"searchinfo": {"totalhits": totalhits}}
    if pages:
        query_obj["pages"] = pages if formatversion2 else {str(p["pageid"]): p for p in pages}
    body["query"] = query_obj
    return json.dumps(body, ensure_ascii=False).encode()


def wikimedia_error(code: str, info: str) -> bytes:
    return json.dumps(
        {
            "error": {"code": code, "info": info, "*": "See https://commons.wikimedia.org/w/api.php for API usage."},
            "servedby": "mw-api-sandbox",
        }
    ).encode()


# ----------------------------------------------------------------------------------- Google
def _gjson(obj: object) -> str:
    """JSON the way Google writes it inside HTML: ``=``, ``&``, ``<`` and ``>`` as \\u escapes."""
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return s.replace("=", "\\u003d").replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _frame(s: str) -> str:
    return f"{len(s):x};{s}"


def google_ichunk(items: Sequence[ResultItem], query: str, page: int) -> bytes:
    """A ``tbm=isch&asearch=ichunk`` response: ``)]}'`` then length-framed chunks (hex length in
    characters, ``;``, content); the HTML chunk holds one ``div.rg_meta`` JSON per result."""
    cei = _hx("cei", query, page, n=12)
    q = html.escape(query, quote=True).encode("ascii", "xmlcharrefreplace").decode()
    divs = []
    for k, it in enumerate(items):
        gid = _hx("gid", it.url, n=7)
        site = _site(it.page_url)
        meta = {
            "id": gid,
            "isu": site,
            "itg": 0,
            "oh": it.height,
            "ou": it.url,
            "ow": it.width,
            "pt": it.title,
            "rh": site,
            "rid": _hx("rid", it.url, n=7),
            "rmt": 0,
            "rt": 0,
            "ru": it.page_url,
            "st": site,
            "th": 168,
            "tu": it.thumb_url,
            "tw": max(60, round(168 * it.width / max(1, it.height))),
        }
        t = html.escape(it.title).encode("ascii", "xmlcharrefreplace").decode()
        divs.append(
            f'<div jscontroller="vbC6V" class="rg_bx rg_di rg_el ivg-i" data-ved="{_hx("ved", it.url, k)}">'
            f'<a jsname="hSRGPd" href="#" class="rg_l" rel="noopener"><div class="THL2l"></div>'
            f'<img id="{gid}" src="{html.escape(it.thumb_url)}" class="rg_ic rg_i" alt="Image result for {q}">'
            f'<div class="rg_ilmbg">{it.width}&nbsp;&#215;&nbsp;{it.height}</div></a>'
            f'<a class="iKjWAf irc-nic isr-rtc a-no-hover-decoration" href="#" rel="noopener" target="_blank">'
            f'<div class="mVDMnf nJGrxf">{t}</div><div class="nJGrxf FnqxG"><span>{site}</span></div></a>'
            f'<div class="rg_meta notranslate">{_gjson(meta)}</div><div class="ll0QOb"></div></div>'
        )
    body = f'<style>.rg_meta{{display:none}}</style><div data-cei="{cei}" class="rg_add_chunk">{"".join(divs)}</div>'
    return (")]}'\n" + _frame(f'["{cei}"]') + _frame("[2]") + _frame(body) + _frame("[9]") + "0;").encode()


GOOGLE_SORRY = """<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN">
<html>
<head><meta http-equiv="content-type" content="text/html; charset=utf-8"><meta name="viewport" content="initial-scale=1"><title>{url}</title></head>
<body style="font-family: arial, sans-serif; background-color: #fff; color: #000; padding:20px; font-size:18px; overscroll-behavior:contain;" onload="e=document.getElementById('captcha');if(e){{e.focus();}} if(solveSimpleChallenge) {{solveSimpleChallenge(0,0);}}">
<div style="max-width:400px;">
<hr noshade size="1" style="color:#ccc; background-color:#ccc;"><br>
<form id="captcha-form" action="index" method="post">
<noscript>
<div style="font-size:13px;">
  In order to continue, please enable javascript on your web browser.
</div>
</noscript>
<script src="https://www.google.com/recaptcha/enterprise.js" async defer></script>
<script>var submitCallback = function(response) {{document.getElementById('captcha-form').submit();}};</script>
<div id="recaptcha" class="g-recaptcha" data-sitekey="6LfwuyUTAAAAAOAmoS0fdqijC2PbbdH4kjq62Y1b" data-callback="submitCallback" data-s="{token}"></div>

<input type='hidden' name='q' value='{token}'><input type="hidden" name="continue" value="{url}">
</form>
<hr noshade size="1" style="color:#ccc; background-color:#ccc;">

<div style="font-size:13px;">
<b>About this page</b><br><br>

Our systems have detected unusual traffic from your computer network.  This page checks to see if it&#39;s really you sending the requests, and not a robot.  <a href="#" onclick="document.getElementById('infoDiv').style.display='block';">Why did this happen?</a><br><br>

<div id="infoDiv" style="display:none; background-color:#eee; padding:10px; margin:0 0 15px 0; line-height:1.4em;">
This page appears when Google automatically detects requests coming from your computer network which appear to be in violation of the <a href="//www.google.com/policies/terms/">Terms of Service</a>. The block will expire shortly after those requests stop.  In the meantime, solving the above CAPTCHA will let you continue to use our services.<br><br>This traffic may have been sent by malicious software, a browser plug-in, or a script that sends automated requests.  If you share your network connection, ask your administrator for help &mdash; a different computer using the same IP address may be responsible.  <a href="//support.google.com/websearch/answer/86640">Learn more</a><br><br>Sometimes you may be asked to solve the CAPTCHA if you are using advanced terms that robots are known to use, or sending requests very quickly.
</div>
<br><div style="font-size:13px; line-break: anywhere;">
IP address: {ip}<br>Time: {time}<br>URL: {url}<br>
</div>
</div>
</div>
</body>
</html>
"""


def google_sorry(url: str, ip: str = "127.0.0.1") -> bytes:
    """Google's real "unusual traffic" CAPTCHA page (the captured format), for ``url``."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return GOOGLE_SORRY.format(url=html.escape(url), token=_hx("sorry", url, n=24), ip=ip, time=now).encode()


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)
