// tenfold storefront enhancements. Every page works without this file: it only improves pages whose plain
// HTML already works (a search form that submits, a "next page" link that navigates). Whenever a script
// step or a request fails, the plain behaviour stays in place.
(function () {
  "use strict";
  var doc = document;
  if (!("fetch" in window) || !doc.querySelector) return;
  var nav = navigator;
  var saveData = !!(nav.connection && nav.connection.saveData) ||
    (window.matchMedia && matchMedia("(prefers-reduced-data: reduce)").matches) ||
    doc.documentElement.getAttribute("data-save-data") === "1";

  function get(url, accept) {
    return fetch(url, { headers: { Accept: accept }, credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return accept === "application/json" ? r.json() : r.text();
    });
  }

  // Live search suggestions: the form still submits to /search as before.
  function suggest(form) {
    var input = form.querySelector("input[name=q]");
    if (!input) return;
    var list = doc.createElement("ul");
    list.className = "suggest";
    list.id = "suggest-list";
    list.setAttribute("role", "listbox");
    list.hidden = true;
    form.appendChild(list);
    input.setAttribute("autocomplete", "off");
    input.setAttribute("aria-controls", list.id);
    input.setAttribute("aria-autocomplete", "list");
    var timer = 0, seq = 0;
    function clear() { list.hidden = true; list.textContent = ""; }
    input.addEventListener("input", function () {
      clearTimeout(timer);
      var q = input.value.trim();
      if (q.length < 2) { clear(); return; }
      timer = setTimeout(function () {
        var mine = ++seq;
        get("/api/products?limit=6&q=" + encodeURIComponent(q), "application/json").then(function (page) {
          if (mine !== seq) return;
          list.textContent = "";
          (page.items || []).forEach(function (p) {
            var li = doc.createElement("li"), a = doc.createElement("a");
            li.setAttribute("role", "option");
            a.href = "/products/" + p.id;
            a.textContent = p.name;
            li.appendChild(a);
            list.appendChild(li);
          });
          list.hidden = !list.firstChild;
        }).catch(clear);
      }, saveData ? 400 : 150);
    });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Escape") clear();
      if (e.key === "ArrowDown" && list.firstChild) { e.preventDefault(); list.querySelector("a").focus(); }
    });
    list.addEventListener("keydown", function (e) {
      var a = doc.activeElement, li = a && a.parentNode;
      if (e.key === "ArrowDown" && li.nextSibling) { e.preventDefault(); li.nextSibling.firstChild.focus(); }
      if (e.key === "ArrowUp") { e.preventDefault(); (li.previousSibling ? li.previousSibling.firstChild : input).focus(); }
      if (e.key === "Escape") { clear(); input.focus(); }
    });
    doc.addEventListener("click", function (e) { if (!form.contains(e.target)) clear(); });
  }

  // Infinite scroll: the "next page" link is fetched and its items appended; on any failure the link
  // stays and navigates as a plain link.
  function infinite(list, link) {
    var busy = false, observer = null;
    function seen() {
      var ids = {};
      list.querySelectorAll("[data-id]").forEach(function (el) { ids[el.getAttribute("data-id")] = 1; });
      return ids;
    }
    function more(e) {
      if (busy) { if (e) e.preventDefault(); return; }
      if (e) e.preventDefault();
      busy = true;
      link.classList.add("loading");
      get(link.href, "text/html").then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        var items = page.querySelector("[data-items]");
        if (!items) throw new Error("no items");
        var ids = seen();
        items.querySelectorAll("[data-id]").forEach(function (el) {
          if (!ids[el.getAttribute("data-id")]) list.appendChild(doc.importNode(el, true));
        });
        var next = page.querySelector("a[rel=next]");
        if (next) {
          link.href = next.getAttribute("href");
          link.classList.remove("loading");
          busy = false;
        } else {
          if (observer) observer.disconnect();
          link.parentNode.removeChild(link);
        }
      }).catch(function () {
        // Fall back to the plain link: stop intercepting, let it navigate.
        if (observer) observer.disconnect();
        link.removeEventListener("click", more);
        link.classList.remove("loading");
        link.setAttribute("data-fallback", "1");
        if (e) location.href = link.href;
      });
    }
    link.addEventListener("click", more);
    // No prefetching on Save-Data: the next page loads when asked for.
    if (!saveData && "IntersectionObserver" in window) {
      observer = new IntersectionObserver(function (entries) {
        if (entries.some(function (x) { return x.isIntersecting; })) more();
      }, { rootMargin: "400px" });
      observer.observe(link);
    }
  }

  // Upload progress: the same form, sent by XMLHttpRequest so its progress can be shown; on a network
  // failure the form is submitted the plain way.
  function uploads(form) {
    if (!("FormData" in window)) return;
    var bar = form.querySelector("progress");
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      if (bar) { bar.hidden = false; bar.value = 0; }
      xhr.upload.onprogress = function (p) {
        if (bar && p.lengthComputable) bar.value = Math.round(100 * p.loaded / p.total);
      };
      xhr.onload = function () {
        if (xhr.status >= 200 && xhr.status < 300 && xhr.responseURL) { location.href = xhr.responseURL; return; }
        doc.open(); doc.write(xhr.responseText); doc.close();
      };
      xhr.onerror = function () { form.submit(); };
      xhr.send(new FormData(form));
    });
  }

  // In-place add to cart: the same form, sent by fetch; the page stays. On any failure the form is
  // submitted the plain way (to the cart page).
  function addToCart(form) {
    var status = form.querySelector(".added");
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      fetch(form.action, {
        method: "POST", credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)).toString()
      }).then(function (r) {
        if (!r.ok) throw new Error(r.status);
        return r.json();
      }).then(function (c) {
        if (status) status.textContent = "Added: " + c.count + " in your cart. ";
        var link = doc.createElement("a");
        link.href = "/cart"; link.textContent = "View cart";
        if (status) status.appendChild(link);
      }).catch(function () { form.submit(); });
    });
  }

  doc.querySelectorAll("form[data-cart]").forEach(addToCart);
  doc.querySelectorAll("form[data-upload]").forEach(uploads);
  doc.querySelectorAll("form.search").forEach(suggest);
  var list = doc.querySelector("[data-items]"), link = doc.querySelector("a[rel=next]");
  if (list && link) infinite(list, link);
  doc.documentElement.setAttribute("data-enhanced", "1");
})();
